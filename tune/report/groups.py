"""The sweep by pretraining method: when ``method`` is searched (``space: method: choice [jigclu, simclr]``),
how each method's trials did, so a tuned JigClu is read against a tuned SimCLR from the same sweep.

Each method's configs (repeats fold into their leader, as in the ranking) with their ranked value: how
many, the best and its trial, and the median. A plain function of :class:`tune.report.data.SweepData`
returning JSON-ready data (docs/report.md, ``by_method``).
"""

from __future__ import annotations

from statistics import median
from typing import Any

from jigclu.values import jsonable as clean
from tune.report.data import SweepData
from tune.report.seeds import trial_value


def by_method(sweep: SweepData, metric: str, mode: str) -> list[dict[str, Any]] | None:
    """One entry per method the sweep's trials ran, best method first; None unless ``method`` was searched."""
    if "method" not in sweep.space_keys:
        return None
    values: dict[str, list[tuple[float, str]]] = {}
    counts: dict[str, int] = {}
    for t in sweep.trials:
        method = t.params.get("method")
        if t.repeat_of or method is None:
            continue
        counts[str(method)] = counts.get(str(method), 0) + 1
        value = trial_value(t, metric, mode)
        if value is not None:
            values.setdefault(str(method), []).append((value, t.trial_id))
    sign = -1.0 if mode == "max" else 1.0
    out = []
    for method, n in counts.items():
        scored = sorted(values.get(method, []), key=lambda v: sign * v[0])
        out.append({"method": method, "trials": n, "scored": len(scored),
                    "best": clean(scored[0][0]) if scored else None,
                    "best_trial": scored[0][1] if scored else None,
                    "median": clean(median(v for v, _ in scored)) if scored else None})
    out.sort(key=lambda e: (e["best"] is None, sign * (e["best"] or 0.0)))
    return out


__all__ = ["by_method"]
