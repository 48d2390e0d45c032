"""Validate files: read each one, tell the kinds of document apart, and collect every problem
as a :class:`~jigclu.cluster.issues.ValidationIssue`.

A document with ``apiVersion: ray.io/...`` is a KubeRay manifest (:mod:`jigclu.cluster.kuberay`);
another Kubernetes object (``apiVersion`` and ``kind``: a ServiceAccount, ...) is only scanned
for secrets; anything else is a Ray cluster-launcher config (:mod:`jigclu.cluster.launcher`).
Every document and every raw line is scanned for secrets (:mod:`jigclu.secrets`, shared with the
config scan).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from jigclu.cluster.issues import KeyPath, Problem, ValidationIssue, format_key_path
from jigclu.cluster.kuberay import check_kuberay
from jigclu.cluster.launcher import check_launcher
from jigclu.secrets import comment_secrets, scan_secrets


def validate_files(paths: Sequence[str | Path]) -> list[ValidationIssue]:
    """Validate cluster-launcher YAMLs and KubeRay manifests; return every problem found.

    A missing or unreadable file, or one that is not valid YAML, is one issue (not an
    exception), so a CLI can report all files in one pass.
    """
    issues: list[ValidationIssue] = []
    for path in paths:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            issues.append(ValidationIssue(name, "", "no such file"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(ValidationIssue(name, "", f"cannot read: {exc}"))
            continue
        issues.extend(validate_text(text, name))
    return issues


def validate_text(text: str, file: str = "<text>") -> list[ValidationIssue]:
    """Validate the YAML ``text`` of one file (one or more documents)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [ValidationIssue(file, where, f"not valid YAML: {problem}")]
    docs = [d for d in docs if d is not None]
    if not docs:
        return [ValidationIssue(file, "", "file is empty")]

    issues: list[ValidationIssue] = []
    structured_hits: set[str] = set()
    for index, doc in enumerate(docs):
        prefix = f"doc{index + 1}." if len(docs) > 1 else ""
        problems, hits = _validate_document(doc)
        structured_hits |= hits
        issues.extend(
            ValidationIssue(file, prefix + format_key_path(path), msg) for path, msg in problems
        )
    # Secrets in comments never reach the parsed documents: scan the raw lines for whatever
    # the structured scan did not already report.
    issues.extend(ValidationIssue(file, f"line {line_no}", f"{what} (in a comment)")
                  for line_no, what in comment_secrets(text, structured_hits))
    return issues


def validate_document(doc: Any) -> list[tuple[str, str]]:
    """Validate one parsed document; return ``(key_path, message)`` pairs."""
    problems, _ = _validate_document(doc)
    return [(format_key_path(path), msg) for path, msg in problems]


def _validate_document(doc: Any) -> tuple[list[Problem], set[str]]:
    if not isinstance(doc, dict):
        return [((), f"top level must be a mapping, got {type(doc).__name__}")], set()
    secret_problems, hits = scan_secrets(doc)
    api_version = doc.get("apiVersion")
    if isinstance(api_version, str) and api_version.startswith("ray.io/"):
        problems = check_kuberay(doc)
    elif "apiVersion" in doc and "kind" in doc:
        problems = []  # another Kubernetes object (ServiceAccount, ...): secrets only
    else:
        problems = check_launcher(doc)
    return _dedupe(problems + secret_problems), hits


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """Keep the first problem reported for each key path (our wording before the schema's)."""
    seen: set[KeyPath] = set()
    out: list[Problem] = []
    for path, msg in problems:
        if path not in seen:
            seen.add(path)
            out.append((path, msg))
    return out
