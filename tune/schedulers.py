"""The sweep's search, scheduler and stop rule, built from its spec.

- **Search**: Optuna's TPE (default) or its seeded RandomSampler (``searcher: random``; the same
  configs whatever the results, so two schedulers can be compared on one set of configs). Under
  PBT there is no Optuna: Tune's random variant generator draws the population.
- **Scheduler**: ASHA compares the *rung metric* (kNN by default for the linear-probe objective:
  cheap, every epoch) while the searcher and the report use the sweep's metric; PBT
  (``scheduler.type: pbt``) exploits the top trials' checkpoints and mutates ``optim.lr``,
  ``loss.temperature``, ``loss.w_loc``, ``loss.w_clu`` (``tune.space.PBT_MUTABLE``). The restored
  trial trains with the mutated values: ``jigclu.trainers.loop.apply_configured``.
- **Stop rule**: a trial whose embeddings collapsed (its result says ``collapsed``, see
  ``jigclu.trainers.knn.CollapseRule``) is stopped; the report lists the reason.

Every component gets its metric and mode explicitly (the TuneConfig gets none), because ASHA's
and the searcher's metrics may differ.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.stopper import Stopper

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
    return ResumableLimiter(searcher, max_concurrent=spec.max_concurrent), None


def build_scheduler(sweep: Sweep) -> Any:
    """ASHA on the rung metric, PBT on the metric, or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    spec, sched = sweep.spec, sweep.spec.scheduler
    if sched.type == "asha":
        max_t = sweep.max_t
        return ASHAScheduler(time_attr="training_iteration", metric=sweep.rung_metric, mode=spec.mode, max_t=max_t,
                             grace_period=min(sched.grace_period, max_t),  # short runs
                             reduction_factor=sched.reduction_factor)
    if sched.type == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", metric=sweep.metric, mode=spec.mode,
                                       perturbation_interval=sched.perturbation_interval,
                                       quantile_fraction=sched.quantile_fraction, synch=sched.synch,
                                       hyperparam_mutations={p.key: tune_domain(p) for p in sweep.params})
    return FIFOScheduler()


class CollapseStopper(Stopper):
    """Stops a trial whose last result says its embeddings collapsed."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(result.get("collapsed"))

    def stop_all(self) -> bool:
        return False


__all__ = ["CollapseStopper", "build_scheduler", "build_search", "tune_domain"]
