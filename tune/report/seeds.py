"""What seeds say: each leader's value over its seeds, and whether the top two can be told apart.

A sweep with ``repeats`` (tune/repeats.py) re-ran its leading configs with more seeds, the same
seeds for every leader. Here each leader gets its values per seed, their mean, standard deviation
and a Student-t interval of the mean; the leaders are ranked by mean (the winner is the best
mean, not the best single run); the winner and the runner-up are compared on the seeds both ran
(a paired difference and its interval), and the report says in words when that interval holds
zero. The pooled seed standard deviation is what the report sets its margins against.

Plain functions of :class:`tune.report.data.SweepData` returning JSON-ready dicts.
"""

from __future__ import annotations

import math
from statistics import mean, stdev
from typing import Any

from tune.report.data import SweepData
from jigclu.values import jsonable as clean
from tune.report.trial import Trial, finite_int


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile for ``confidence`` with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf((1 + confidence) / 2, df))


def interval(values: list[float], confidence: float) -> tuple[float, float] | None:
    """Student-t interval of the mean; None with fewer than two values."""
    if len(values) < 2:
        return None
    half = t_quantile(confidence, len(values) - 1) * stdev(values) / math.sqrt(len(values))
    return mean(values) - half, mean(values) + half


def trial_value(t: Trial, metric: str, mode: str) -> float | None:
    """The value a run is ranked by (the same rule as the report's ranking)."""
    best = t.best(metric, mode)
    return best[0] if best else None


def seed_stats(sweep: SweepData, metric: str, mode: str) -> dict[str, Any] | None:
    """Leaders by mean over seeds, the paired winner-vs-runner-up comparison and the pooled seed
    spread; None for a sweep without repeats."""
    spec = sweep.definition.get("repeats")
    repeats = [t for t in sweep.trials if t.repeat_of]
    if not spec and not repeats:
        return None
    confidence = float((spec or {}).get("confidence", 0.95))
    base_seed = finite_int((sweep.definition.get("config") or {}).get("seed")) or 0
    by_id = {t.trial_id: t for t in sweep.trials}
    runs: dict[str, dict[int, float]] = {}
    led = {r.repeat_of for r in repeats}
    for t in sweep.trials:
        leader = t.repeat_of or t.trial_id
        if (t.repeat_of or t.trial_id in led) and leader in by_id:
            value = trial_value(t, metric, mode)
            if value is not None and t.status == "finished":
                seed = finite_int(t.params.get("seed")) if t.repeat_of else base_seed
                runs.setdefault(leader, {})[seed if seed is not None else base_seed] = value
    leaders = [_leader(tid, values, confidence) for tid, values in runs.items()]
    leaders.sort(key=lambda e: -e["mean"] if mode == "max" else e["mean"])
    for rank, entry in enumerate(leaders, 1):
        entry["rank"] = rank
    variances = [stdev(list(v.values())) ** 2 for v in runs.values() if len(v) >= 2]
    out: dict[str, Any] = {
        "confidence": confidence, "seeds_planned": (spec or {}).get("seeds"), "top_k": (spec or {}).get("top_k"),
        "leaders": leaders, "winner": leaders[0]["trial_id"] if leaders else None,
        "pooled_sd": clean(math.sqrt(mean(variances))) if variances else None,
        "n_seeds_min": min((e["n"] for e in leaders), default=0), "comparison": None,
    }
    if len(leaders) >= 2:
        out["comparison"] = _paired(leaders[0], leaders[1], runs, confidence, mode)
    return out


def _leader(trial_id: str, values: dict[int, float], confidence: float) -> dict[str, Any]:
    vals = [values[s] for s in sorted(values)]
    ci = interval(vals, confidence)
    return {"trial_id": trial_id, "n": len(vals), "seeds": sorted(values), "values": [clean(v) for v in vals],
            "mean": clean(mean(vals)), "sd": clean(stdev(vals)) if len(vals) >= 2 else None,
            "interval": [clean(ci[0]), clean(ci[1])] if ci else None}


def _paired(first: dict[str, Any], second: dict[str, Any], runs: dict[str, dict[int, float]], confidence: float,
            mode: str) -> dict[str, Any]:
    """Winner minus runner-up on the seeds both ran (better-is-positive), with its interval."""
    a, b = runs[first["trial_id"]], runs[second["trial_id"]]
    shared = sorted(set(a) & set(b))
    sign = 1.0 if mode == "max" else -1.0
    diffs = [sign * (a[s] - b[s]) for s in shared]
    ci = interval(diffs, confidence)
    apart = ci is not None and ci[0] > 0
    out = {"winner": first["trial_id"], "runner_up": second["trial_id"], "paired_seeds": len(shared),
           "mean_difference": clean(mean(diffs)) if diffs else None,
           "interval": [clean(ci[0]), clean(ci[1])] if ci else None, "told_apart": apart}
    level = f"{confidence:.0%}"
    if ci is None:
        out["message"] = (f"trials {first['trial_id']} and {second['trial_id']} share {len(shared)} seed"
                          f"{'s' * (len(shared) != 1)}: too few to tell them apart")
    elif apart:
        out["message"] = (f"trial {first['trial_id']} beats {second['trial_id']} by {mean(diffs):.2f} "
                          f"({level} interval {ci[0]:.2f} to {ci[1]:.2f}, {len(shared)} paired seeds)")
    else:
        out["message"] = (f"the top two (trials {first['trial_id']} and {second['trial_id']}) cannot be told "
                          f"apart: their paired difference {mean(diffs):+.2f} has a {level} interval of "
                          f"{ci[0]:.2f} to {ci[1]:.2f}, which holds zero ({len(shared)} seeds)")
    return out


def against_spread(margin: float | None, seeds: dict[str, Any] | None) -> str | None:
    """How a margin compares with the pooled seed standard deviation, in words (None: not measured)."""
    if margin is None or not seeds or seeds.get("pooled_sd") is None:
        return None
    sd = seeds["pooled_sd"]
    if sd == 0:
        return "seed sd 0"
    ratio = abs(margin) / sd
    verdict = "beyond" if ratio >= 2 else "within"
    return f"{ratio:.1f} seed sd ({sd:.2f}): {verdict} the seed noise"


__all__ = ["against_spread", "interval", "seed_stats", "t_quantile", "trial_value"]
