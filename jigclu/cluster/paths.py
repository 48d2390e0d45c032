"""Where the shipped cluster files live: the ``clusters/`` directory of a jigclu checkout."""

from __future__ import annotations

from pathlib import Path


def clusters_dir(start: str | Path | None = None) -> Path | None:
    """The ``clusters/`` directory: next to the jigclu package (a source checkout), else in
    ``start`` (default: the current directory). None when neither exists."""
    candidates = [Path(__file__).resolve().parents[2] / "clusters"]
    candidates.append(Path(start) / "clusters" if start is not None else Path.cwd() / "clusters")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def default_cluster_files(start: str | Path | None = None) -> list[Path]:
    """Every ``*.yaml`` / ``*.yml`` under the shipped ``clusters/`` directory, sorted."""
    root = clusters_dir(start)
    if root is None:
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))
