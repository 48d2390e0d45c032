"""The sweep file's schema: :class:`SweepSpec` and its parts (scheduler, repeats, resources),
validated by pydantic; ``tune.space`` reads a file into it and checks the space against the trainer
config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What PBT may change in a running trial: values a restored checkpoint can train on as they are.
PBT_MUTABLE = ("optim.lr", "loss.temperature", "loss.w_loc", "loss.w_clu")


class SchedulerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["asha", "promote", "pbt", "none"] = Field("asha", description="asha: stop the trials behind "
                                                          "at a rung (Ray's ASHA); promote: pause them there and "
                                                          "resume the best 1/eta later (tune/promotion.py)")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1, description="default: the trainer's epochs")
    perturbation_interval: int = Field(1, ge=1, description="pbt: epochs between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="pbt: the bottom fraction that "
                                     "copies a top trial's checkpoint")
    synch: bool = Field(False, description="pbt: perturb all trials together at each interval (trials that "
                        "arrive first wait for the others): exploits no longer depend on which trial is ahead")


def milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """A successive-halving scheduler's rungs: ``grace_period * eta^k`` epochs, below ``max_t``."""
    out, k = [], 0
    while (m := int(round(grace_period * reduction_factor ** k))) < max_t:
        if m not in out:
            out.append(m)
        k += 1
    return out


class RepeatSpec(BaseModel):
    """The sweep's last stage (tune/repeats.py): its ``top_k`` best configs run with ``seeds`` seeds in all."""
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(2, ge=1, description="leaders re-run: the best configs that ran every epoch")
    seeds: int = Field(3, ge=2, le=20, description="seeds per leader in all (its search run is the first)")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="level of the intervals the report prints")


class ResourcesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, ge=0.0, description="CPUs of an in-process trial (per worker for Ray Train trials)")
    gpu: float = Field(0.0, ge=0.0)


class SweepSpec(BaseModel):
    """A sweep file, validated. ``config`` is the base trainer config (a mapping)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "sweep"
    task: Literal["pretrain", "linear", "semi", "finetune"] = "pretrain"
    base: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any] = Field(default_factory=dict)
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    objective: Literal["metric", "linear_probe"] = Field("metric", description="linear_probe: select on a "
                                                         "frozen-feature probe (probe_top1) on the validation split")
    rung_metric: str | None = Field(None, description="what ASHA compares at its rungs; default: knn_top1 for "
                                    "the linear_probe objective, else the metric")
    searcher: Literal["tpe", "random"] = "tpe"
    val_size: float | None = Field(0.1, gt=0, description="validation split carved from the training images "
                                   "(a count or a fraction < 1): what every selection scores; null = the test split")
    test_top_k: int = Field(1, ge=0, description="after the sweep, score this many best trials once on the test split")
    num_samples: int = Field(8, ge=1, le=100000)
    max_concurrent: int = Field(2, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    seed: int = 0
    output_dir: str = "sweeps"
    storage: str | None = Field(None, description="where the sweep lives (local dir, file://, s3://, gs://); "
                                "default: output_dir")
    study_storage: str | None = Field(None, description="Optuna RDB URL (postgresql://USER@HOST:5432/DB) for the "
                                      "study, without a password (PGPASSWORD or ~/.pgpass give it: tune/study_db.py); "
                                      "default: SQLite kept with the sweep")
    trial_mode: Literal["auto", "inprocess", "ray_train"] = "auto"
    reuse_actors: bool = Field(True, description="in-process trials run one after another in warm Tune actors "
                               "(torch and the trainer imported once per actor, not once per trial)")
    max_failures: int = Field(2, ge=0, description="times Tune starts a trial again after its driver died (a "
                              "node lost): it resumes from its checkpoint; a trial that failed for a reason "
                              "of its own is not trained again")
    resources: ResourcesSpec = ResourcesSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    repeats: RepeatSpec | None = Field(None, description="re-run the best configs with more seeds, paired; the "
                                       "winner is the best mean over seeds (tune/repeats.py)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or "/" in v or v in (".", ".."):
            raise ValueError("must be a plain name, not a path")
        return v

    def default_metric(self) -> str:
        if self.objective == "linear_probe":
            return "probe_top1"
        return self.metric or ("knn_top1" if self.task == "pretrain" else "val_top1")

    def default_rung_metric(self) -> str:
        return self.rung_metric or ("knn_top1" if self.objective == "linear_probe" else self.default_metric())


def saved_spec(definition: dict[str, Any]) -> SweepSpec:
    """The spec of a saved ``sweep.yaml``, read leniently (the report reads sweeps of any age): keys
    this version does not know are dropped, and a key whose value does not validate any more takes
    its default, so every default (metric, rung metric, searcher, mode, scheduler) is this module's."""
    from pydantic import ValidationError

    known = {k: v for k, v in definition.items() if k in SweepSpec.model_fields} if isinstance(definition, dict) else {}
    for _ in range(len(known) + 1):
        try:
            return SweepSpec.model_validate(known)
        except ValidationError as exc:
            bad = {err["loc"][0] for err in exc.errors() if err.get("loc")}
            if not bad & set(known):
                break
            known = {k: v for k, v in known.items() if k not in bad}
    return SweepSpec()


__all__ = ["PBT_MUTABLE", "RepeatSpec", "ResourcesSpec", "SchedulerSpec", "SweepSpec", "milestones", "saved_spec"]
