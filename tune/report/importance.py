"""Parameter importances from the trials themselves: each ended trial's sampled parameters and
its final objective value go into an in-memory Optuna study (distributions from sweep.yaml's
``space``), and Optuna's fANOVA (seed 0) splits the objective's variance among them.

Built from the trial results rather than read from optuna.db, so a random-search or PBT sweep
(which has no Optuna study) gets importances too, and the objective is always the one the
report names. A parameter the trials sampled at essentially one value carries no information:
it is flagged ("too few distinct values") instead of drawn as a 0.000 bar.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from tune.report.data import SweepData, first_line
from tune.report.science import row_config
from tune.report.trial import Trial

CONTINUOUS = ("uniform", "loguniform", "int", "logint")
MIN_DISTINCT = 3          # a continuous parameter needs this many distinct values
MAX_SHARE = 0.8           # ... and no parameter may have one value in this share of the trials


def skipped_importances() -> dict[str, Any]:
    return {"method": None, "source": None, "objective": None, "n_trials": 0, "values": None, "flags": {},
            "message": "skipped (--no-importance)"}


def param_importances(sweep: SweepData) -> dict[str, Any]:
    """fANOVA importances of the sweep's parameters for each ended trial's last value of the
    sweep's metric (schema: docs/report.md, ``importances``)."""
    metric, pbt = sweep.metric, sweep.scheduler_type == "pbt"
    out: dict[str, Any] = {"method": "fANOVA", "source": "trial results", "objective": None, "n_trials": 0,
                           "values": None, "flags": {}, "message": None}
    ended = [t for t in sweep.trials if t.status in ("finished", "stopped") and not t.repeat_of]  # a config once
    used = [(t, t.last_value(metric)) for t in ended if t.last_value(metric) is not None]
    stopped = sum(t.status == "stopped" for t, _ in used)
    missing = sum(t.status == "stopped" for t in ended) - stopped
    objective = f"each trial's last reported {metric}"
    if stopped:
        by = {"asha": "ASHA", "promote": "the promotion scheduler"}.get(sweep.scheduler_type, "the sweep")
        objective += f" ({stopped} stopped early by {by}: their value at the epoch they stopped)"
    if missing:
        objective += f"; {missing} stopped trial{'s' * (missing > 1)} never reported {metric}, left out"
    if pbt:
        objective += "; each trial's initial config (its first result's): PBT's mutations are ignored"
    out["objective"], out["n_trials"] = objective, len(used)
    if len(used) < 2:
        out["message"] = f"needs at least 2 ended trials with {metric} (the sweep has {len(used)})"
        return out
    try:
        samples = [(_params(sweep, t, pbt), value) for t, value in used]
        keys = [k for k in sweep.space_keys if any(k in p for p, _ in samples)]
        kinds = _kinds(sweep, keys)
        out["flags"] = {k: reason for k in keys
                        if (reason := _flag(kinds[k], [p[k] for p, _ in samples if k in p], len(samples)))}
        assess = [k for k in keys if k not in out["flags"]]
        if not assess:
            out["message"] = "every parameter was sampled at essentially one value: nothing to attribute"
            return out
        out["values"] = _fanova(sweep.mode, samples, _distributions(kinds, keys, [p for p, _ in samples]),
                                assess, out)
        if out["values"] and len(assess) == 1:
            out["message"] = f"only {assess[0]} varied enough to assess: its share is 1 by construction"
    except Exception as exc:  # noqa: BLE001 - importances are a nicety; the report goes on
        out["values"] = None
        out["message"] = f"could not compute importances: {type(exc).__name__}: {first_line(str(exc))}"
    return out


def _params(sweep: SweepData, t: Trial, pbt: bool) -> dict[str, Any]:
    """The parameters a trial was sampled with; under PBT its first result's config (its initial one)."""
    if pbt and t.results:
        config = row_config(t.results[0])
        if config:
            keys = sweep.space_keys
            return {k: v for k, v in config.items() if k in keys}
    return dict(t.params)


def _kinds(sweep: SweepData, keys: list[str]) -> dict[str, Any]:
    """key -> its :class:`tune.space.Param` from sweep.yaml's space (None when it has none or is odd)."""
    from jigclu.errors import ConfigError
    from tune.space import parse_param

    space = sweep.definition.get("space") if isinstance(sweep.definition.get("space"), dict) else {}
    out: dict[str, Any] = {}
    for k in keys:
        try:
            out[k] = parse_param(k, space[k]) if k in space else None
        except ConfigError:
            out[k] = None
    return out


def _flag(param: Any, values: list[Any], n_trials: int) -> str | None:
    """Why a parameter's sampled values cannot carry an importance, or None."""
    if len(values) < n_trials:
        return f"not sampled in {n_trials - len(values)} of {n_trials} trials"
    counts = Counter(_hashable(v) for v in values)
    value, top = counts.most_common(1)[0]
    numeric = all(_is_number(v) for v in values)
    continuous = param.kind in CONTINUOUS if param is not None else numeric and len(counts) > 2
    if continuous and len(counts) < MIN_DISTINCT:
        return f"too few distinct values: {len(counts)} among {n_trials} trials"
    if top >= MAX_SHARE * n_trials:
        return f"too few distinct values: {value} in {top} of {n_trials} trials"
    return None


def _fanova(mode: str, samples: list[tuple[dict[str, Any], float]], distributions: dict[str, Any],
            assess: list[str], out: dict[str, Any]) -> dict[str, float] | None:
    import warnings

    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from optuna.distributions import FloatDistribution, IntDistribution

    def internal(dist: Any, value: Any) -> Any:
        return int(value) if isinstance(dist, IntDistribution) else float(value) \
            if isinstance(dist, FloatDistribution) else _hashable(value)

    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    study.add_trials([optuna.trial.create_trial(
        params={k: internal(d, p[k]) for k, d in distributions.items() if k in p},
        distributions={k: d for k, d in distributions.items() if k in p}, value=value) for p, value in samples])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                       params=[k for k in assess if k in distributions])
    values = {k: float(v) for k, v in values.items()}
    if not values or not all(math.isfinite(v) for v in values.values()):
        out["message"] = "fANOVA could not separate the parameters (all trials scored the same?)"
        return None
    return values


def _distributions(kinds: dict[str, Any], keys: list[str], params: list[dict[str, Any]]) -> dict[str, Any]:
    """Optuna distributions from the space, widened to hold every value the trials report."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for k in keys:
        seen = [_hashable(p[k]) for p in params if k in p]
        param = kinds.get(k)
        numeric = bool(seen) and all(_is_number(v) for v in seen)
        if param is not None and param.kind == "choice" or not numeric:
            choices = [_hashable(c) for c in param.values] if param is not None and param.kind == "choice" else []
            out[k] = CategoricalDistribution(list(dict.fromkeys(choices + seen)))
            continue
        low, high = min(seen), max(seen)
        if param is not None:
            low, high = min(low, param.values[0]), max(high, param.values[1])
        log = param is not None and param.kind.startswith("log") and low > 0
        as_int = param.kind in ("int", "logint") and all(float(v).is_integer() for v in seen) \
            if param is not None else all(isinstance(v, int) for v in seen)
        if as_int:
            out[k] = IntDistribution(math.floor(low), math.ceil(high), log=log)
        else:
            out[k] = FloatDistribution(float(low), float(high), log=log)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _hashable(value: Any) -> Any:
    """A value Optuna's categorical distribution accepts (lists and mappings as their text)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
