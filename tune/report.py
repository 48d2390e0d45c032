"""Sweep report (placeholder table until the rich report lands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    sweep_dir = Path(argv[0])
    rows = []
    for trial in sorted(sweep_dir.glob("trial-*")):
        results = [json.loads(l) for l in (trial / "result.json").read_text().splitlines() if l.strip()] \
            if (trial / "result.json").exists() else []
        best = max((r.get("knn_top1", 0) or 0 for r in results), default=None)
        rows.append((trial.name, len(results), best, (trial / "error.txt").exists()))
    for name, epochs, best, err in sorted(rows, key=lambda r: -(r[2] or -1)):
        print(f"{name:24s} epochs {epochs:3d} best {best if best is not None else '-'} {'ERROR' if err else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def add_cli(sub) -> None:
    p = sub.add_parser("report", help="summarise a sweep directory")
    p.add_argument("sweep_dir")
    p.set_defaults(func=lambda a: main([a.sweep_dir]))
