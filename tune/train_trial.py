"""A sweep trial that drives a Ray Train run, reporting to Tune with a checkpoint every epoch.

Ray's ``TuneReportCallback`` forwards a Train run's metrics to Tune but never a checkpoint, so
Tune knows nothing it could restart such a trial from: a trial whose driver died (its node lost)
and was retried started counting epochs again from 1, and its scheduler saw epoch 3 as epoch 1.
Here the Train controller hands each report (rank 0's metrics and the checkpoint's location) to
the trial through a queue, and the trial reports it to Tune with a small checkpoint that points
at the Train checkpoint (:data:`POINTER`). A retried trial is then restored by Tune at the epoch
it had reached, while its Train run resumes from its own newest checkpoint in storage.

Tune hears of every epoch exactly once, in order, so its ``training_iteration`` is the number of
epochs done: an epoch trained again after a restart is not reported twice, and an epoch whose
report was lost (persisted by its worker, but the node or the driver died before the report
reached Tune) is reported from the run's ``metrics.jsonl`` before the next one.

**PBT.** When PBT exploits, Tune restores the trial from its *donor's* Tune checkpoint, with a
mutated config. A Ray Train run with the trial's run name would resume its own newest checkpoint,
so the trial goes on in a new Train run, ``<name>-x<k>`` beside the first (:func:`plan_runs`; the
trial's :data:`TRAIN_RUNS` lists them), which starts from a copy of the donor's state
(``initial_state.pt``, weights, optimiser and epoch) and applies the new config's values
(``jigclu.trainers.loop.apply_configured``): its first epoch is the donor's next. Under PBT a run's
controller keeps copies of the run's newest epoch checkpoints in :data:`DONORS` for that, since
Ray keeps a sweep trial's *best* checkpoints by the sweep's metric (``jigclu.ray_train.keep_score``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from pathlib import Path
from queue import Empty
from typing import Any

from ray import tune
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Queue

from jigclu import storage
from jigclu.config import RunConfig
from jigclu.errors import JigcluError, warn
from jigclu.ray_session import prepare_elastic_run, release_reservations, remove_left_groups
from jigclu.ray_train import KEEP_SCORE, make_trainer
from jigclu.runs import STATE_FILE, RunLayout, ray_checkpoint_name
from jigclu.values import jsonable
from tune.layout import POINTER, TRAIN_RUNS
from tune.space import Sweep

DONORS = "pbt_donors"  # in a PBT trial's Train run: copies of its newest epoch checkpoints, for exploits
INITIAL_STATE = "initial_state.pt"  # in a Train run that started from a PBT donor: the donor's state


def donors_kept(perturbation_interval: int) -> int:
    """Donor copies a PBT trial's run keeps. A donor's pointer is its checkpoint at its last perturbation
    (PBT forgets it at the next one), so at most ``perturbation_interval`` reports old when a trial
    exploits it; Tune keeps a PBT trial's 4 newest checkpoints (``tune.sweep.build_tuner``); and the
    Train run may be 2 epochs ahead of what Tune heard."""
    return max(4, perturbation_interval) + 2


class ReportToTrial(UserCallback):
    """Runs in the Train controller: every report goes to the trial's queue (blocking while the
    trial has not taken the previous one, as Ray's own ``TuneReportCallback`` does)."""

    def __init__(self, queue: Queue, run_dir: str | None = None, donors: int = 0) -> None:
        self.queue, self.run_dir, self.donors = queue, run_dir, donors  # donors: copies kept (PBT), 0: none

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        name = checkpoint.path.rstrip("/").rsplit("/", 1)[-1] if checkpoint else None  # checkpoint_epoch_NNNNN
        if self.donors and self.run_dir and name and name.startswith("checkpoint_epoch_"):
            keep_donor(self.run_dir, name, self.donors)  # now, while it is the newest: Ray deletes no newest one
        self.queue.put({"metrics": {k: v for k, v in metrics[0].items() if k != KEEP_SCORE}, "checkpoint": name})


def keep_donor(run_dir: str, name: str, keep: int) -> None:
    """Copy the run's checkpoint ``name`` into its :data:`DONORS` and drop all but the ``keep`` newest
    there; best effort (an exploit of a missing copy falls back to Ray's checkpoint, then fails)."""
    donors = storage.join(run_dir, DONORS)
    try:
        storage.write_atomic(storage.join(donors, name, STATE_FILE),
                             storage.read_bytes(storage.join(run_dir, name, STATE_FILE)))
        for old in sorted(storage.list_dir(donors))[:-keep]:
            storage.delete(storage.join(donors, old))
    except JigcluError as exc:
        warn(f"no PBT donor copy of {run_dir}/{name}: {exc}")


def run_train_trial(sweep: Sweep, cfg: RunConfig, train_root: str, trial_dir: str | None = None) -> None:
    """Run ``cfg``'s Ray Train job and report each of its epochs to Tune with a pointer checkpoint.

    The job is the trial's current Train run (:func:`plan_runs`): a retried trial resumes it, a trial
    PBT just exploited starts a new one from its donor's state. Its Train checkpoints are kept by the
    sweep's metric (the best ones and the newest)."""
    spec = sweep.spec
    pointer = _restored_pointer()
    runs, exploit = plan_runs(cfg, pointer, recorded := _read_runs(trial_dir))
    run = runs[-1]["run"]
    run_dir = storage.join(train_root, run)
    elastic = isinstance(cfg.scaling.workers, tuple)
    for each in runs:  # a retried or exploited trial: what the dead attempts of its runs held
        remove_left_groups(storage.join(train_root, each["run"]))
        if elastic and each["run"] != run:
            release_reservations(each["run"])
    epochs = cfg.train.epochs if spec.task == "pretrain" else cfg.eval.epochs
    if pointer is not None and epochs and int(pointer["epoch"]) + 1 >= epochs:
        return  # restored at the last epoch (PBT perturbs there too): no Train run for nothing to train
    initial = storage.join(run_dir, INITIAL_STATE) if runs[-1]["from"] is not None else None
    if exploit:
        storage.write_atomic(initial, storage.read_bytes(pointed_file(pointer, train_root)))
    if trial_dir is not None and (exploit or recorded is None):  # after the donor's state: a retry goes on from it
        storage.write_atomic(storage.join(trial_dir, TRAIN_RUNS), json.dumps(runs, indent=1))
    if elastic:
        prepare_elastic_run(run)
    last = int(pointer["epoch"]) if pointer else -1  # the epoch Tune has (a donor's after an exploit)
    done = max((e for e, _file in RunLayout(run_dir).checkpoints()), default=-1)
    if exploit or not epochs or done + 1 < epochs:  # else its workers ran ahead to the end before a restart
        queue = Queue(maxsize=1, actor_options={"num_cpus": 0})  # in the trial's placement group: beside it
        donors = donors_kept(spec.scheduler.perturbation_interval) if spec.scheduler.type == "pbt" else 0
        trainer = make_trainer(spec.task, cfg.model_copy(update={"name": run}), train_root, initial_state=initial,
                               callbacks=[ReportToTrial(queue, run_dir, donors)], keep_best=(sweep.metric, spec.mode))
        last = _train(trainer, queue, run, run_dir, last)
    # epochs the run trained before a restart whose reports Tune never got (a PBT pause stops a trial
    # whose workers ran ahead): a restart with nothing left to train brings no report of them
    for lost, checkpoint in _lost_reports(run_dir, last, None):
        _report(lost, run, checkpoint)


def _train(trainer: Any, queue: Queue, run: str, run_dir: str, last: int) -> int:
    """Fit the Train run, reporting each epoch after ``last`` to Tune as it ends; returns the last one."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the trial's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="jigclu-train-fit", daemon=True)
    thread.start()
    while True:
        try:
            item = queue.get(timeout=1.0)
        except Empty:
            if thread.is_alive():
                continue
            break
        epoch = int(item["metrics"].get("epoch", last + 1))
        if epoch <= last:  # trained again after a restart: Tune has it already
            continue
        for lost, checkpoint in _lost_reports(run_dir, last, epoch):
            _report(lost, run, checkpoint)
        _report(item["metrics"], run, item["checkpoint"])
        last = epoch
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return last


def _report(metrics: dict[str, Any], run: str, train_checkpoint: str | None) -> None:
    metrics = {k: jsonable(v) for k, v in metrics.items()}
    if train_checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="jigclu-pointer-") as tmp:
        Path(tmp, POINTER).write_text(json.dumps({"run": run, "checkpoint": train_checkpoint,
                                                  "epoch": metrics.get("epoch")}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _restored_pointer() -> dict[str, Any] | None:
    """The pointer of the Tune checkpoint this trial was restored from (None: a fresh start)."""
    checkpoint = tune.get_checkpoint()
    return None if checkpoint is None else _pointer_in(checkpoint)


def _pointer_in(checkpoint: Any) -> dict[str, Any] | None:
    with checkpoint.as_directory() as directory:
        pointer = Path(directory, POINTER)
        return json.loads(pointer.read_text()) if pointer.exists() else None


def plan_runs(cfg: RunConfig, pointer: dict[str, Any] | None,
              runs: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], bool]:
    """The trial's Train runs (:data:`TRAIN_RUNS`) once it starts from ``pointer``, and whether that
    starts a new one (True: a PBT exploit).

    A retry, i.e. a trial restarted with the config its current run trains with, from that run's
    pointer (however far the run got since: a report lost with its driver) or from the pointer the
    run started from, resumes the run's newest checkpoint. Anything else is an exploit: a pointer
    into another trial's run, or into this trial's own past with a mutated config (PBT cloned a
    trial that had cloned this one); it gets a new run, ``<name>-x<k>``, starting from the pointed
    state, so neither the run's own newer checkpoints nor Ray's resume of a run by name win over it.
    """
    digest = config_digest(cfg)
    runs = runs or [{"run": cfg.name, "from": None, "config": digest}]
    current = runs[-1]
    if pointer is None or (current["config"] == digest
                           and (pointer.get("run") == current["run"] or _same(pointer, current["from"]))):
        return runs, False
    return [*runs, {"run": f"{cfg.name}-x{len(runs)}", "from": pointer, "config": digest}], True


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in ("run", "checkpoint", "epoch"))


def config_digest(cfg: RunConfig) -> str:
    """The trial config a run trains with (its name aside): PBT's mutations change it, a retry does not."""
    text = json.dumps(cfg.model_dump(mode="json", exclude={"name"}), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _read_runs(trial_dir: str | None) -> list[dict[str, Any]] | None:
    path = storage.join(trial_dir, TRAIN_RUNS) if trial_dir is not None else None
    return json.loads(storage.read_text(path)) if path is not None and storage.is_file(path) else None


def _lost_reports(run_dir: str, last: int, epoch: int | None) -> list[tuple[dict[str, Any], str | None]]:
    """``(metrics, Train checkpoint name or None)`` of the epochs after ``last`` and before ``epoch``
    (None: all) from the run's ``metrics.jsonl``; the checkpoint when Ray kept it, so the newest
    pointer Tune gets is to the newest state."""
    if epoch is not None and epoch <= last + 1:
        return []
    layout = RunLayout(run_dir)
    found: dict[int, dict[str, Any]] = {}
    for record in layout.read_metrics():
        found.setdefault(int(record.get("epoch", -1)), record)
    kept = {e for e, _file in layout.checkpoints()}
    end = max(found, default=-1) + 1 if epoch is None else epoch
    return [(found[e], ray_checkpoint_name(e) if e in kept else None) for e in range(last + 1, end) if e in found]


def pointed_state(checkpoint: Any, train_root: str) -> dict[str, Any] | None:
    """The training state a Ray Train trial's Tune checkpoint points to (None: not such a checkpoint)."""
    from jigclu.checkpoint import load_checkpoint

    where = _pointer_in(checkpoint)
    return None if where is None else load_checkpoint(pointed_file(where, train_root), map_location="cpu")


def pointed_file(where: dict[str, Any], train_root: str) -> str:
    """The state file a pointer names: Ray's checkpoint, else (Ray kept better ones) its PBT donor copy."""
    run_dir = storage.join(train_root, where["run"])
    candidates = [storage.join(run_dir, where["checkpoint"], STATE_FILE),
                  storage.join(run_dir, DONORS, where["checkpoint"], STATE_FILE)]
    for file in candidates:
        if storage.is_file(file):
            return file
    raise JigcluError(f"the Train checkpoint {where['run']}/{where['checkpoint']} (epoch {where.get('epoch')}) is "
                      f"gone from {train_root}: neither Ray's copy nor a PBT donor copy ({DONORS}/) is left")
