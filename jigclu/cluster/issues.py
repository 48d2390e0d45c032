"""What a check reports: :class:`ValidationIssue`, the key paths inside it, and the small value
helpers every check shares."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

from jigclu.secrets import KeyPath, Problem, format_key_path  # shared with the config scan

__all__ = ["KeyPath", "Problem", "ValidationIssue", "format_key_path", "ray_version", "is_int", "short"]


@dataclass(frozen=True)
class ValidationIssue:
    """One problem in one file: where (file + key path) and what."""

    file: str
    key_path: str
    message: str

    def __str__(self) -> str:
        if self.key_path:
            return f"{self.file}: {self.key_path}: {self.message}"
        return f"{self.file}: {self.message}"


def ray_version() -> str:
    """The Ray this client runs (read from its metadata, so Ray itself is not imported)."""
    return importlib.metadata.version("ray")


def is_int(value: Any) -> bool:
    """A whole number, and not a bool (YAML's ``true`` would otherwise count as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters so one bad value cannot flood a report."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
