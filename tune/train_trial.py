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
"""

from __future__ import annotations

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
from jigclu.ray_session import prepare_elastic_run, remove_left_groups
from jigclu.ray_train import make_trainer
from jigclu.runs import STATE_FILE, RunLayout, jsonable

POINTER = "train_checkpoint.json"  # in a Tune checkpoint of a Ray Train trial: {"run", "checkpoint", "epoch"}


class ReportToTrial(UserCallback):
    """Runs in the Train controller: every report goes to the trial's queue (blocking while the
    trial has not taken the previous one, as Ray's own ``TuneReportCallback`` does)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        name = checkpoint.path.rstrip("/").rsplit("/", 1)[-1] if checkpoint else None  # checkpoint_epoch_NNNNN
        self.queue.put({"metrics": metrics[0], "checkpoint": name})


def run_train_trial(task: str, cfg: RunConfig, train_root: str) -> None:
    """Run ``cfg``'s Ray Train job and report each of its epochs to Tune with a pointer checkpoint."""
    if isinstance(cfg.scaling.workers, tuple):
        prepare_elastic_run(cfg.name)
    remove_left_groups(storage.join(train_root, cfg.name))  # a retried trial: what its dead attempt held
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})  # in the trial's placement group: beside it
    trainer = make_trainer(task, cfg, train_root, callbacks=[ReportToTrial(queue)])
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the trial's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="jigclu-train-fit", daemon=True)
    thread.start()
    last = _restored_epoch()
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
        for lost in _lost_reports(storage.join(train_root, cfg.name), last, epoch):
            _report(lost, cfg.name, None)
        _report(item["metrics"], cfg.name, item["checkpoint"])
        last = epoch
    thread.join()
    if "error" in outcome:
        raise outcome["error"]


def _report(metrics: dict[str, Any], run: str, train_checkpoint: str | None) -> None:
    metrics = {k: jsonable(v) for k, v in metrics.items()}
    if train_checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="jigclu-pointer-") as tmp:
        Path(tmp, POINTER).write_text(json.dumps({"run": run, "checkpoint": train_checkpoint,
                                                  "epoch": metrics.get("epoch")}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _restored_epoch() -> int:
    """The epoch of the Tune checkpoint this trial was restored from (-1: a fresh start)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return -1
    with checkpoint.as_directory() as directory:
        pointer = Path(directory, POINTER)
        return int(json.loads(pointer.read_text()).get("epoch", -1)) if pointer.exists() else -1


def _lost_reports(run_dir: str, last: int, epoch: int) -> list[dict[str, Any]]:
    """Metrics of the epochs after ``last`` and before ``epoch`` from the run's ``metrics.jsonl``."""
    if epoch <= last + 1:
        return []
    found: dict[int, dict[str, Any]] = {}
    for record in RunLayout(run_dir).read_metrics():
        found.setdefault(int(record.get("epoch", -1)), record)
    return [found[e] for e in range(last + 1, epoch) if e in found]


def pointed_state(checkpoint: Any, train_root: str) -> dict[str, Any] | None:
    """The training state a Ray Train trial's Tune checkpoint points to (None: not such a checkpoint)."""
    from jigclu.checkpoint import load_checkpoint

    with checkpoint.as_directory() as directory:
        pointer = Path(directory, POINTER)
        if not pointer.exists():
            return None
        where = json.loads(pointer.read_text())
    return load_checkpoint(storage.join(train_root, where["run"], where["checkpoint"], STATE_FILE), map_location="cpu")
