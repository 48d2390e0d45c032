"""The sweep's search, scheduler and stop rule, built from its spec.

- **Search**: Optuna's TPE (default) or its seeded RandomSampler (``searcher: random``; the same
  configs whatever the results, so two schedulers can be compared on one set of configs). Under
  PBT there is no Optuna: Tune's random variant generator draws the population.
- **Scheduler**: ASHA compares the *rung metric* (kNN by default for the linear-probe objective:
  cheap, every epoch) while the searcher and the report use the sweep's metric; PBT
  (``scheduler.type: pbt``) exploits the top trials' checkpoints and mutates ``optim.lr``,
  ``loss.temperature``, ``loss.w_loc``, ``loss.w_clu`` (``tune.spec.PBT_MUTABLE``). The restored
  trial trains with the mutated values: ``jigclu.trainers.loop.apply_configured``.
- **Stop rule**: a trial whose embeddings collapsed (its result says ``collapsed``, see
  ``jigclu.evaluation.knn.CollapseRule``) is stopped; the report lists the reason.

Every component gets its metric and mode explicitly (the TuneConfig gets none), because ASHA's
and the searcher's metrics may differ.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.stopper import Stopper

from tune.repeats import is_repeat
from tune.space import Param, Sweep


def tune_domain(p: Param) -> Any:
    """A space parameter as a Tune search domain (PBT's population and its resampling)."""
    if p.kind == "choice":
        return tune.choice(list(p.values))
    low, high = p.values
    return {"uniform": lambda: tune.uniform(low, high), "loguniform": lambda: tune.loguniform(low, high),
            "int": lambda: tune.randint(int(low), int(high) + 1),
            "logint": lambda: tune.lograndint(int(low), int(high) + 1)}[p.kind]()


def build_search(sweep: Sweep, optuna_storage: Any) -> tuple[Any, dict[str, Any] | None]:
    """``(search_alg, param_space)``: Optuna (TPE or random) with a define-by-run space, or, under
    PBT, Tune's seeded random generator over a Tune param space."""
    import optuna
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tune.searcher import ResumableLimiter, ResumableOptunaSearch

    spec = sweep.spec
    if spec.scheduler.type == "pbt":
        space = {p.key: tune_domain(p) for p in sweep.params}
        return BasicVariantGenerator(max_concurrent=spec.max_concurrent, random_state=spec.seed), space
    sampler = optuna.samplers.RandomSampler(seed=spec.seed) if spec.searcher == "random" else None
    searcher = ResumableOptunaSearch(space=sweep.define_by_run(), metric=sweep.metric, mode=spec.mode,
                                     seed=None if sampler else spec.seed, sampler=sampler,
                                     study_name=spec.name, storage=optuna_storage)
    limited = ResumableLimiter(searcher, max_concurrent=spec.max_concurrent)
    if spec.repeats is None:
        return limited, None
    from tune.repeats import RepeatLeaders, repeat_trials

    seed = int(sweep.base.get("seed", 0) or 0)
    return RepeatLeaders(limited, spec=spec.repeats, metric=sweep.metric, mode=spec.mode, max_t=sweep.max_t,
                         search_trials=spec.num_samples - repeat_trials(spec.repeats), base_seed=seed,
                         max_concurrent=spec.max_concurrent, time_budget_s=spec.time_budget_s), None


def build_scheduler(sweep: Sweep) -> Any:
    """ASHA (stop) or promotion (pause and promote) on the rung metric, PBT on the metric, or FIFO."""
    from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining

    from tune.promotion import PromotionScheduler

    spec, sched = sweep.spec, sweep.spec.scheduler
    max_t = sweep.max_t
    if sched.type in ("asha", "promote"):
        kind = StoppingASHA if sched.type == "asha" else PromotionScheduler
        return kind(time_attr="training_iteration", metric=sweep.rung_metric, mode=spec.mode, max_t=max_t,
                    grace_period=min(sched.grace_period, max_t),  # short runs
                    reduction_factor=sched.reduction_factor)
    if sched.type == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", metric=sweep.metric, mode=spec.mode,
                                       perturbation_interval=sched.perturbation_interval,
                                       quantile_fraction=sched.quantile_fraction, synch=sched.synch,
                                       hyperparam_mutations={p.key: tune_domain(p) for p in sweep.params})
    return FIFOScheduler()


def link(search_alg: Any, scheduler: Any) -> None:
    """A promotion scheduler's paused trials hold no slot of the search's concurrency limit."""
    from tune.searcher import ResumableLimiter

    if not hasattr(scheduler, "paused_ids"):
        return
    while search_alg is not None and not isinstance(search_alg, ResumableLimiter):
        search_alg = getattr(search_alg, "searcher", None)
    if search_alg is not None:
        search_alg.paused_by = scheduler


class StoppingASHA(ASHAScheduler):
    """Ray's ASHA (it stops the trials behind at a rung), leaving repeat trials alone: they are the
    seeds of configs that already won (tune/repeats.py)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if is_repeat(trial.config):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        if not is_repeat(trial.config):
            super().on_trial_complete(tune_controller, trial, result)


class CollapseStopper(Stopper):
    """Stops a trial whose last result says its embeddings collapsed."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(result.get("collapsed"))

    def stop_all(self) -> bool:
        return False


__all__ = ["CollapseStopper", "StoppingASHA", "build_scheduler", "build_search", "link", "tune_domain"]
