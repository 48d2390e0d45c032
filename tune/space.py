"""Sweep definitions: a YAML file -> a validated search space -> an Optuna define-by-run function.

A sweep file names the trainer, its base config, and the knobs to search::

    task: pretrain
    base: ../../configs/demo.yaml        # relative to this file (optional)
    config: {train: {epochs: 4}}         # overrides on top of base (optional)
    space:
      model.grid: choice [2, 3, 4]
      optim.lr: loguniform 0.005 0.3
      loss.w_loc: uniform 0.25 2.0
      data.batch_size: choice [64, 128]
      monitor.k: int 5 50
    metric: knn_top1
    mode: max
    num_samples: 8
    ...

Each key of ``space`` and ``config`` must be a trainer-config key the task reads (:mod:`jigclu.task_keys`); every
value a sampler may produce is checked against the config model before any trial starts, so an unknown or unread
key, an empty choice, a ``loguniform`` with a non-positive bound, or a space with no valid combination is one error.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from jigclu.config import RunConfig, build_config, deep_merge, format_validation_error, read_yaml
from jigclu.errors import ConfigError
from jigclu.task_keys import refuse_unread_in_sweep
from tune.spec import PBT_MUTABLE, SweepSpec, milestones

KINDS = ("choice", "uniform", "loguniform", "int", "logint")


@dataclass(frozen=True)
class Param:
    """One searched knob: ``kind`` and its arguments (choices, or low/high bounds)."""

    key: str
    kind: str
    values: tuple[Any, ...]

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or Tune's captor of one) for a value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if self.kind == "uniform":
            return trial.suggest_float(self.key, low, high)
        if self.kind == "loguniform":
            return trial.suggest_float(self.key, low, high, log=True)
        return trial.suggest_int(self.key, int(low), int(high), log=self.kind == "logint")

    def corners(self) -> list[Any]:
        """Values that represent the whole range when checking validity up front."""
        if self.kind == "choice":
            return list(self.values)
        low, high = self.values
        if self.kind in ("int", "logint"):
            return sorted({int(low), int(high), int((low + high) // 2)})
        mid = math.sqrt(low * high) if self.kind == "loguniform" else (low + high) / 2
        return [low, mid, high]


def parse_param(key: str, spec: Any) -> Param:
    """``"loguniform 0.005 0.3"``, ``"choice [2, 3]"`` or ``{"choice": [2, 3]}`` -> Param."""
    if isinstance(spec, dict) and len(spec) == 1:
        kind, args = next(iter(spec.items()))
    elif isinstance(spec, str) and spec.split(maxsplit=1)[0] in KINDS:
        kind, _, rest = spec.partition(" ")
        try:
            rest = rest.strip()
            args = yaml.safe_load(rest) if rest.startswith("[") else \
                [yaml.safe_load(tok) for tok in re.split(r"[\s,]+", rest) if tok]
        except yaml.YAMLError:
            raise ConfigError(f"space: {key}: cannot parse {spec!r}") from None
    else:
        raise ConfigError(f"space: {key}: expected '<kind> <args>' with kind one of {', '.join(KINDS)}; "
                          f"got {spec!r}")
    if kind not in KINDS:
        raise ConfigError(f"space: {key}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "choice":
        if isinstance(args, list) and len(args) == 1 and isinstance(args[0], list):
            args = args[0]
        if not isinstance(args, list) or not args:
            raise ConfigError(f"space: {key}: choice needs a non-empty list of values")
        return Param(key, kind, tuple(args))
    if not isinstance(args, list) or len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
        raise ConfigError(f"space: {key}: {kind} needs two numeric bounds, low and high")
    low, high = args
    if not low < high:
        raise ConfigError(f"space: {key}: {kind} needs low < high (got {low}, {high})")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ConfigError(f"space: {key}: {kind} needs positive bounds (got low={low})")
    if kind in ("int", "logint") and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"space: {key}: int bounds must be whole numbers")
    return Param(key, kind, (low, high))


@dataclass
class Sweep:
    """A validated sweep: its spec, the resolved base config (a dict) and the parsed space."""

    spec: SweepSpec
    base: dict[str, Any]
    params: list[Param]

    @property
    def metric(self) -> str:
        return self.spec.default_metric()

    @property
    def rung_metric(self) -> str:
        return self.spec.default_rung_metric()

    @property
    def epochs(self) -> int:
        return int(build_config(RunConfig, self.base).train.epochs) if self.spec.task == "pretrain" \
            else int(self.trial_config({}).eval.epochs or 100)

    @property
    def max_t(self) -> int:
        """Epochs a trial runs when nothing stops it: the scheduler's ``max_t``, else the trainer's epochs."""
        return self.spec.scheduler.max_t or self.epochs

    def trial_config(self, sampled: dict[str, Any]) -> RunConfig:
        """The full trainer config of one trial (raises ConfigError for invalid combinations): the base
        config, the sampled values, and what the sweep decides (its validation split, the probe)."""
        decided: dict[str, Any] = {"data": {"val_size": self.spec.val_size}}
        if self.spec.objective == "linear_probe":
            decided["monitor"] = {"probe": True}
        return build_config(RunConfig, deep_merge(deep_merge(self.base, unflatten(sampled)), decided))

    def define_by_run(self) -> "DefineByRun":
        return DefineByRun(tuple(self.params))

    def to_dict(self) -> dict[str, Any]:
        """The sweep as plain data (what a Tune trial receives): the spec, its resolved base config as
        ``config`` and no ``base`` file; :meth:`from_dict` reads it back."""
        out = self.spec.model_dump(mode="json")
        out["config"], out["base"] = self.base, None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sweep":
        """The sweep :meth:`to_dict` wrote, as validated when it was loaded (the spec is checked again; the
        base config is the resolved one, a recipe that may hold sections other tasks read)."""
        spec = SweepSpec.model_validate(data)
        return cls(spec, data["config"], [parse_param(k, v) for k, v in spec.space.items()])


@dataclass(frozen=True)
class DefineByRun:
    """The Optuna define-by-run function of a space (a picklable object, as Tune saves it)."""

    params: tuple[Param, ...]

    def __call__(self, trial: Any) -> None:
        for p in self.params:
            p.suggest(trial)


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": 0.1}`` -> ``{"optim": {"lr": 0.1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read, merge and validate a sweep file; ``key=value`` overrides apply to the sweep file
    (``num_samples=4``, ``storage=s3://...``) or to the trainer config (``config.train.epochs=2``; the prefix
    may be left out for trainer keys that are no sweep key: ``scaling.gpu=true``)."""
    from jigclu.config import parse_overrides

    path = Path(path)
    data = read_yaml(path)
    data = deep_merge(data, as_sweep_overrides(parse_overrides(overrides or [])))
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc).replace("config:", f"sweep {path.name}:", 1)) from None
    base: dict[str, Any] = {}
    if spec.base:
        base_path = Path(spec.base)
        if not base_path.is_absolute():
            base_path = (path.parent / base_path) if (path.parent / base_path).exists() else base_path
        base = read_yaml(base_path)
    base = deep_merge(base, spec.config)
    return validate_sweep(spec, base)


def as_sweep_overrides(nested: dict[str, Any]) -> dict[str, Any]:
    """Overrides of a sweep: sweep keys stay; trainer keys that are no sweep key
    (``scaling.gpu=true``, ``data.dataset=...``) go to the trainer config, as if written ``config.<key>``."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if key not in SweepSpec.model_fields and key in RunConfig.model_fields:
            out = deep_merge(out, {"config": {key: value}})
        else:
            out = deep_merge(out, {key: value})
    return out


def sweep_methods(spec: SweepSpec, base: dict[str, Any]) -> list[str]:
    """The pretraining methods the sweep's trials may run: the choices of a searched ``method``, else
    the base config's (a value that is no method is left to the config's own check)."""
    if "method" in spec.space:
        try:
            values = parse_param("method", spec.space["method"]).values
        except (ConfigError, AttributeError):
            return []
        return [str(v) for v in values or []]
    return [str(base.get("method") or RunConfig.model_fields["method"].default)]


def validate_sweep(spec: SweepSpec, base: dict[str, Any]) -> Sweep:
    """Check the base config and every sampled value against the trainer config model."""
    refuse_unread_in_sweep(spec.task, spec.config, spec.space, sweep_methods(spec, base))  # keys the task never reads
    try:
        base_cfg = build_config(RunConfig, base)
    except ConfigError as exc:
        raise ConfigError(f"sweep base config: {str(exc).removeprefix('config: ')}") from None
    params = [parse_param(key, value) for key, value in spec.space.items()]
    if not params:
        raise ConfigError("sweep: the space is empty; add at least one key under 'space'")
    _check_science(spec, base_cfg, params)
    for p in params:
        _check_key(p.key)
        for value in p.corners():  # each value must be acceptable on its own
            try:
                base_cfg.model_validate(deep_merge(base, unflatten({p.key: value})))
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(x) for x in err["loc"])
                if loc == p.key:
                    raise ConfigError(f"space: {p.key}: value {value!r} is invalid: "
                                      f"{err['msg'].removeprefix('Value error, ')}") from None
    # some combination must be valid (e.g. a grid that divides the crop size)
    grid = [p.corners() for p in params]
    total = math.prod(len(g) for g in grid)
    combos = itertools.islice(itertools.product(*grid), 20000)
    first_error = None
    for combo in combos:
        try:
            RunConfig.model_validate(deep_merge(base, unflatten(dict(zip([p.key for p in params], combo)))))
            break
        except ValidationError as exc:
            first_error = first_error or format_validation_error(exc).removeprefix("config: ")
    else:
        raise ConfigError(f"sweep: no combination of the space is valid ({min(total, 20000)} checked); "
                          f"for example: {first_error}")
    sweep = Sweep(spec, base, params)
    if spec.repeats is not None:
        _check_repeats(sweep)
    return sweep


def _check_science(spec: SweepSpec, base_cfg: RunConfig, params: list[Param]) -> None:
    """Sweep options that cannot work together: one line each, before any trial starts."""
    if spec.repeats is not None and spec.scheduler.type == "pbt":
        raise ConfigError("sweep: repeats re-run a config with other seeds, but under scheduler pbt a trial's "
                          "config changes as it trains; drop 'repeats' or use scheduler.type asha, promote or none")
    if spec.scheduler.type == "pbt":
        fixed = [p.key for p in params if p.key not in PBT_MUTABLE]
        if fixed:
            raise ConfigError(f"sweep: scheduler pbt cannot mutate {', '.join(fixed)} in a running trial (a "
                              f"restored checkpoint must fit the new values); PBT can search "
                              f"{', '.join(PBT_MUTABLE)}: use scheduler.type asha for the others")
        if spec.task != "pretrain":
            raise ConfigError("sweep: scheduler pbt is for pretraining sweeps (task: pretrain)")
    if spec.objective == "linear_probe":
        if spec.task != "pretrain":
            raise ConfigError(f"sweep: objective linear_probe scores pretrained features; task {spec.task} "
                              f"has its own metric (val_top1)")
        if spec.metric not in (None, "probe_top1"):
            raise ConfigError(f"sweep: objective linear_probe selects on probe_top1, not metric {spec.metric}; "
                              f"drop 'metric' or use objective: metric")
        if not base_cfg.monitor.knn:
            raise ConfigError("sweep: objective linear_probe needs the monitor (monitor.knn: true)")


def _check_repeats(sweep: Sweep) -> None:
    """Repeats that cannot work or cannot fit: one line each."""
    spec, params, rep = sweep.spec, sweep.params, sweep.spec.repeats
    if any(p.key == "seed" for p in params):
        raise ConfigError("sweep: 'seed' is in the space and repeats set the seeds of the leaders' re-runs; "
                          "drop one of them")
    extra = rep.top_k * (rep.seeds - 1)
    sched = spec.scheduler
    if sched.type == "promote":
        full = int((spec.num_samples - extra) / sched.reduction_factor ** len(milestones(
            sched.grace_period, sched.reduction_factor, sweep.max_t)))
        if full < rep.top_k:
            raise ConfigError(f"sweep: repeats.top_k {rep.top_k} leaders must run every epoch, but the promotion "
                              f"scheduler takes only {full} of {spec.num_samples - extra} search trials to max_t "
                              f"{sweep.max_t}; raise num_samples, lower repeats.top_k or raise scheduler.grace_period")
    if spec.num_samples - extra < rep.top_k:
        raise ConfigError(f"sweep: repeats need {extra} trials ({rep.top_k} leaders x {rep.seeds - 1} more seeds) "
                          f"of num_samples {spec.num_samples}, leaving {spec.num_samples - extra} for the search, "
                          f"fewer than its {rep.top_k} leaders; raise num_samples to at least {extra + rep.top_k * 2} "
                          f"or lower repeats.top_k / repeats.seeds")


def _check_key(key: str) -> None:
    """The key must name a leaf of the trainer config (``optim.lr``, not ``optim`` or ``optim.lrr``)."""
    model: type[BaseModel] = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            raise ConfigError(f"space: unknown key '{key}' ('{part}' is not in "
                              f"{'.'.join(parts[:i]) or 'the config'})")
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if i == len(parts) - 1:
                raise ConfigError(f"space: '{key}' is a section; name one of its keys")
            model = ann
        elif i != len(parts) - 1:
            raise ConfigError(f"space: unknown key '{key}' ('{part}' has no sub-keys)")
