"""What a sweep's numbers are worth: on which split the trials were selected and what the test
split said once, how far the best trial is from a random-init backbone and from the worst
trial, whether ASHA's first rung predicted the final objective (Spearman's rank correlation),
and, under PBT, each trial's hyperparameter schedule (docs/report.md, "Is the result real?").

Plain functions of :class:`tune.report.data.SweepData` that return JSON-ready dicts.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from tune.report.data import SweepData
from tune.report.seeds import against_spread
from tune.spec import milestones
from jigclu.values import jsonable as clean
from tune.report.trial import finite, finite_int

# metrics scored on the held-out split (the monitor's knn/probe, a downstream trainer's val_*); not
# the training losses
SPLIT_METRIC = re.compile(r"^(?:best_|init_)?(?:knn|probe|val)_")
# keys of the honest-sweep contract: a sweep whose files have none predates validation splits
NEW_ROW_KEYS = ("knn_split", "probe_top1", "init_knn_top1", "embed_std", "collapsed", "loss_temperature")
NEW_DEFINITION_KEYS = ("objective", "rung_metric", "searcher", "val_size")
MIN_CORRELATION_TRIALS = 3


def is_legacy(sweep: SweepData) -> bool:
    """Whether the sweep's files carry no key of the honest-sweep contract (an older sweep: the
    table then shows only what it always showed, plus the "selected on test" message)."""
    if sweep.test_scores is not None or sweep.scheduler_type in ("pbt", "promote") or sweep.definition.get("repeats"):
        return False
    if any(k in sweep.definition for k in NEW_DEFINITION_KEYS):
        return False
    return not any(k in r for t in sweep.trials for r in t.results for k in NEW_ROW_KEYS)


def scored_on_split(metric: str) -> bool:
    """Whether ``metric`` is scored on the held-out split (so that split's name belongs next to it)."""
    return bool(SPLIT_METRIC.match(metric))


# --- selection: val vs test -----------------------------------------------------------------

def selection(sweep: SweepData, metric: str) -> dict[str, Any]:
    """The split the trials were selected on, the split of the ranked ``metric`` (None when the
    split is not known or the metric is no score on a split, e.g. a loss), and the test scores of
    the selected trials.

    A pretraining trial's rows say it (``knn_split``; none: an older sweep, whose monitor scored the
    test split). A downstream trial's rows do not: its trainer scores the validation split when
    sweep.yaml sets ``val_size`` (a sweep.yaml without the key is older: the test split)."""
    splits = {t.knn_split for t in sweep.trials if t.results}
    if any(s is not None for s in splits):
        source = "rows"
        names = {s or "test" for s in splits}
        split = names.pop() if len(names) == 1 else "mixed"
    elif "val_size" in sweep.definition and (sweep.task != "pretrain" or not splits):
        source = "sweep.yaml"
        split = "val" if sweep.val_size is not None else "test"
    else:
        source, split = None, "test"
    return {"split": split, "split_source": source,
            "ranked_split": split if source is not None and scored_on_split(metric) else None,
            "val_size": sweep.val_size, "optimistic": split != "val", "test_scores": _clean_tree(sweep.test_scores)}


def test_entry(sweep: SweepData, trial_id: str, metric: str) -> dict[str, Any] | None:
    """What test_scores.json says of one trial (``value``: ``metric`` on test), None if not scored."""
    scores = sweep.test_scores or {}
    entry = next((e for e in scores.get("trials", []) if str(e.get("trial_id")) == trial_id), None)
    if entry is None:
        return None
    metrics = {str(k): clean(v) for k, v in (entry.get("metrics") or {}).items()
               if finite(v) is not None} if isinstance(entry.get("metrics"), dict) else {}
    return {"value": metrics.get(metric), "metrics": metrics, "epoch": finite_int(entry.get("epoch")),
            "rank": finite_int(entry.get("rank")), "queries": finite_int(entry.get("queries")),
            "split": str(scores.get("split") or "test")}


def selection_messages(sel: dict[str, Any], sweep: SweepData, metric: str) -> list[str]:
    out = []
    if sel["split"] == "test" and scored_on_split(metric):
        why = {"rows": "the rows report knn_split test", "sweep.yaml": "sweep.yaml sets no val_size"}.get(
            sel["split_source"], "there was no validation split")
        out.append(f"the trials were selected on the test split ({why}), so the best value is optimistic; "
                   f"set val_size to select on a validation split and score the test split once")
    elif sel["split"] == "mixed":
        out.append("some trials were scored on the validation split and others on the test split: "
                   "their values are not comparable")
    elif sel["split"] == "val" and sel["test_scores"] is None and not sweep.active and sweep.trials:
        out.append("no test_scores.json: the selected trials have not been scored on the test split yet")
    return out


# --- margins: best vs worst, best vs random init --------------------------------------------

def margins(sweep: SweepData, metric: str, mode: str, seeds: dict[str, Any] | None = None) -> dict[str, Any]:
    """Best and worst config by their *last* value of ``metric`` (errored trials and repeat runs left
    out), and the random-init baseline (``init_<metric>`` or ``init_knn_top1`` in the rows) with best
    minus it. When the sweep measured seeds, "best" is the winner's mean over its seeds and each
    margin is also set against the pooled seed standard deviation (``vs_seeds``)."""
    pick = max if mode == "max" else min
    lasts = [(t, t.last_value(metric)) for t in sweep.trials if t.status != "errored" and not t.repeat_of]
    lasts = [(t, v) for t, v in lasts if v is not None]
    out: dict[str, Any] = {"metric": metric, "value": "last", "n_trials": len(lasts), "best": None,
                           "best_trial": None, "worst": None, "worst_trial": None, "best_minus_worst": None,
                           "random_init": None, "vs_seeds": None}
    winner = (seeds or {}).get("leaders", [None])[0] if (seeds or {}).get("leaders") else None
    if lasts:
        best = pick(lasts, key=lambda tv: tv[1])
        if winner is not None:
            best = (next((t for t, _ in lasts if t.trial_id == winner["trial_id"]), best[0]), winner["mean"])
            out["value"] = "last; best: the winner's mean over its seeds"
        worst = (min if mode == "max" else max)(lasts, key=lambda tv: tv[1])
        out.update(best=clean(best[1]), best_trial=best[0].trial_id, worst=clean(worst[1]),
                   worst_trial=worst[0].trial_id, best_minus_worst=clean(best[1] - worst[1]))
    # the baseline is reported with every epoch (the last report wins)
    init_key = f"init_{metric}" if any(t.last_value(f"init_{metric}") is not None for t in sweep.trials) \
        else "init_knn_top1"
    of = init_key.removeprefix("init_")
    inits = [v for v in (t.last_value(init_key) for t in sweep.trials) if v is not None]
    if inits:
        ofs = [v for v in (t.last_value(of) for t in sweep.trials if t.status != "errored") if v is not None]
        mean = sum(inits) / len(inits)
        best_of = winner["mean"] if winner is not None and of == metric else (pick(ofs) if ofs else None)
        out["random_init"] = {"metric": init_key, "of": of, "n_trials": len(inits), "mean": clean(mean),
                              "min": clean(min(inits)), "max": clean(max(inits)), "best": clean(best_of),
                              "best_minus_mean": clean(best_of - mean) if best_of is not None else None}
    if winner is not None and (seeds or {}).get("pooled_sd") is not None:
        init = out["random_init"] or {}
        out["vs_seeds"] = {"pooled_sd": seeds["pooled_sd"], "winner_interval": winner["interval"],
                           "winner_n": winner["n"], "confidence": seeds["confidence"],
                           "random_init": against_spread(init.get("best_minus_mean") if init.get("of") == metric
                                                         else None, seeds),
                           "worst": against_spread(out["best_minus_worst"], seeds)}
    return out


# --- does the first rung predict the final objective? ----------------------------------------

def rung_correlation(sweep: SweepData) -> dict[str, Any]:
    """Spearman's rho between the rung metric at the first rung (epoch ``grace_period``) and the
    last value of the sweep's metric, over the trials that ran all ``max_t`` epochs and have both;
    and ``per_rung``: the same for every rung and for each of kNN and the probe, the figure that
    says which rung metric predicts the objective better."""
    grace = finite_int(sweep.scheduler.get("grace_period")) or 1
    rung, final = sweep.rung_metric, sweep.metric
    out: dict[str, Any] = {"rung_metric": rung, "rung_epoch": grace, "final_metric": final, "n_trials": 0,
                           "spearman": None, "message": None, "per_rung": []}
    if sweep.scheduler_type not in ("asha", "promote"):
        out.update(rung_epoch=None, message=f"no rungs: the scheduler is {sweep.scheduler_type}, not ASHA")
        return out
    if sweep.max_t is None or grace >= sweep.max_t:
        out["message"] = f"no early rung: the grace period ({grace}) is not below max_t ({sweep.max_t or '?'})"
        return out
    full = [t for t in sweep.trials if t.status != "errored" and t.epochs >= sweep.max_t and not t.repeat_of]
    eta = float(sweep.scheduler.get("reduction_factor") or 2.0)
    for epoch in milestones(grace, eta, sweep.max_t):
        for name in dict.fromkeys((rung, "knn_top1", "probe_top1")):
            rho, n = _rung_rho(full, epoch, name, final)
            if n:
                out["per_rung"].append({"epoch": epoch, "metric": name, "n_trials": n, "spearman": clean(rho)})
    rho, n = _rung_rho(full, grace, rung, final)
    out["n_trials"] = n
    what = f"rung {rung} (epoch {grace}) vs final {final}"
    if n < MIN_CORRELATION_TRIALS:
        out["message"] = (f"{what}: only {n} trial{'s' * (n != 1)} ran all {sweep.max_t} epochs "
                          f"with both; a rank correlation needs at least {MIN_CORRELATION_TRIALS}")
        return out
    out["spearman"] = clean(rho)
    if rho is None:
        out["message"] = f"{what}: one side is constant over {n} trials, so there is no rank correlation"
    return out


def _rung_rho(trials: list[Any], epoch: int, name: str, final: str) -> tuple[float | None, int]:
    """(Spearman of ``name`` at ``epoch`` vs the last ``final``, pairs): None under 3 pairs or a constant side."""
    xs, ys = [], []
    for t in trials:
        row = next((r for r in t.results if finite_int(r.get("training_iteration")) == epoch), {})
        x, y = finite(row.get(name)), t.last_value(final)
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return (spearman(xs, ys) if len(xs) >= MIN_CORRELATION_TRIALS else None), len(xs)


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the average of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's r of the average ranks; None when a side is constant
    or there are fewer than two pairs."""
    if len(xs) != len(ys):
        raise ValueError("spearman: xs and ys differ in length")
    if len(xs) < 2:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


# --- PBT: each trial's hyperparameter schedule -------------------------------------------------

def schedules(sweep: SweepData) -> dict[str, list[dict[str, Any]]] | None:
    """Under PBT, trial id -> the epochs at which its config changed (``{"epoch", "changes":
    {key: [old, new]}}``), read from the ``config`` of its rows; None under other schedulers."""
    if sweep.scheduler_type != "pbt":
        return None
    out: dict[str, list[dict[str, Any]]] = {}
    for t in sweep.trials:
        changes: list[dict[str, Any]] = []
        previous: dict[str, Any] | None = None
        for n, r in enumerate(t.results, 1):
            config = row_config(r)
            if config is None:
                continue
            if previous is not None:
                diff = {k: [clean(previous.get(k)), clean(config.get(k))]
                        for k in list(previous) + [k for k in config if k not in previous]
                        if previous.get(k) != config.get(k)}
                if diff:
                    changes.append({"epoch": finite_int(r.get("training_iteration")) or n, "changes": diff})
            previous = config
        out[t.trial_id] = changes
    return out


def row_config(row: dict[str, Any]) -> dict[str, Any] | None:
    """A result row's ``config`` (Tune's: the trial's sampled params) as flat dotted keys."""
    config = row.get("config")
    return flatten(config) if isinstance(config, dict) else None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _clean_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_tree(v) for v in value]
    return clean(value)
