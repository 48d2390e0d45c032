"""Preemption: SIGTERM stops a run at its next step with a mid-epoch checkpoint, and --resume
continues from that step, seeing exactly the rest of the epoch's images.

In-process tests ask the loop to stop at an exact step (``preempt.request_stop``, what the SIGTERM
handler does); the process tests send a real SIGTERM to a real ``jigclu pretrain`` from outside.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.faults import faults_preempt  # the fault-matrix rows of this file
from jigclu import preempt
from jigclu.checkpoint import load_checkpoint
from jigclu.cli import main
from jigclu.config import load_config
from jigclu.context import LocalContext
from jigclu.data.loader import ShardSampler
from jigclu.errors import JigcluError
from jigclu.launch import prepare
from jigclu.runs import RunLayout, find_checkpoint, read_metrics
from jigclu.trainers import task_class
from jigclu.trainers.loop import run

DATA = ["data.dataset=digits", "data.image_size=32", "model.width=8", "jigsaw.crop_size=32", "train.progress=false"]
TASKS = {
    "pretrain": DATA + ["data.batch_size=32", "data.limit=256", "monitor.knn=false", "optim.lr=0.2",
                        "train.epochs=3", "train.steps_per_epoch=6"],
    # semi: the whole network on a labelled subset, two lr groups; eval.batch_size=24 pads the last batch
    "semi": DATA + ["eval.labels=10%", "eval.epochs=3", "eval.batch_size=24", "eval.val_limit=60"],
    "linear": DATA + ["eval.epochs=3", "eval.batch_size=32", "train.steps_per_epoch=6", "eval.val_limit=60"],
}


def task_of(name: str, stop_at: tuple[int, int] | None = None, draws: list | None = None):
    """Task ``name`` that asks the loop to stop while it trains step ``stop_at`` = (epoch, step), and
    that records a draw of the global torch RNG at every step into ``draws``."""

    class Probe(task_class(name)):  # type: ignore[misc,valid-type]
        def step(self, batch, e, s):
            if (e, s) == stop_at:
                preempt.request_stop()
            if draws is not None:
                draws.append((e, s, torch.rand(()).item()))
            return super().step(batch, e, s)

    return Probe()


def models_equal(a: Path, b: Path) -> None:
    sa, sb = (load_checkpoint(RunLayout(str(run_dir)).latest_checkpoint()) for run_dir in (a, b))
    assert sa["epoch"] == sb["epoch"] and sa["global_step"] == sb["global_step"]
    for key in sa["model"]:  # bit for bit: the same images, in the same order, with the same augmentations
        assert torch.equal(sa["model"][key], sb["model"][key]), key


# ------------------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("world,resumed_world", [(1, 1), (2, 2), (3, 3), (2, 3), (3, 1)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_a_resumed_sampler_draws_exactly_the_rest_of_the_epoch(world, resumed_world, drop_last):
    """After ``s`` steps of per-rank batch ``b`` on ``world`` ranks, skipping ``s * b * world``
    samples leaves exactly the epoch's unseen images, on any world size; at the same world size each
    rank goes on with exactly the indices it would have drawn next."""
    n, b, s, seed, epoch = 103, 4, 5, 7, 3
    full = ShardSampler(n, 1, 0, seed, drop_last=drop_last)
    full.set_epoch(epoch)
    order = full.global_order().tolist()
    assert sorted(order) == list(range(n))  # one permutation: every image once
    ranks = [ShardSampler(n, world, r, seed, drop_last=drop_last) for r in range(world)]
    for sampler in ranks:
        sampler.set_epoch(epoch)
    seen = {i for sampler in ranks for i in list(sampler)[: s * b]}
    assert len(seen) == s * b * world

    resumed = [ShardSampler(n, resumed_world, r, seed, drop_last=drop_last) for r in range(resumed_world)]
    for sampler in resumed:
        sampler.set_epoch(epoch, s * b * world)
    unseen = [i for i in order if i not in seen]
    assert unseen == order[s * b * world:]  # what the stopped steps drew is the head of the epoch's order
    rest = resumed[0].global_order().tolist()
    assert sorted(i for sampler in resumed for i in sampler) == sorted(rest)  # the ranks share it out
    if drop_last:  # the rest of the epoch, in order, less a tail too short for one image per rank
        assert rest == unseen[:len(rest)] and len(unseen) - len(rest) < resumed_world
    else:  # all of the rest, then padding (repeats from the epoch's start) to fill the last step
        assert rest[:len(unseen)] == unseen and len(rest) - len(unseen) < resumed_world
    if resumed_world == world:
        for before, after in zip(ranks, resumed):
            assert list(after) == list(before)[s * b:]


# --------------------------------------------------------------------------------------- the layout


def test_mid_epoch_checkpoints_are_never_taken_for_finished_epochs(tmp_path, capsys):
    layout = RunLayout(str(tmp_path / "run"))
    names = lambda: sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())  # noqa: E731
    layout.save_checkpoint({"epoch": 0}, keep=2)
    for step in (3, 5, 7):
        layout.save_mid_epoch({"epoch": 0, "position": {"epoch": 1, "step": step}}, keep=2)
    # the newest two mid-epoch ones, beside (never instead of) the epoch checkpoint
    assert names() == ["epoch_00000.pt", "mid_epoch_00001_step_000005.pt", "mid_epoch_00001_step_000007.pt"]
    assert [e for e, _f in layout.checkpoints()] == [0]
    assert find_checkpoint(str(tmp_path / "run")).endswith("epoch_00000.pt")  # export / knn / eval.pretrained
    assert layout.load_latest()["position"] == {"epoch": 1, "step": 7}  # --resume
    # a Ray Train run's mid-epoch directory counts for --resume, and is Ray's to delete
    ray_mid = tmp_path / "run" / "checkpoint_mid_epoch_00001_step_000009"
    ray_mid.mkdir()
    torch.save({"epoch": 0, "position": {"epoch": 1, "step": 9}}, ray_mid / "state.pt")
    assert layout.load_latest()["position"]["step"] == 9 and [e for e, _f in layout.checkpoints()] == [0]
    layout.save_checkpoint({"epoch": 1}, keep=2)  # the epoch is done: its mid-epoch checkpoints go
    assert names() == ["epoch_00000.pt", "epoch_00001.pt"] and ray_mid.exists()
    assert layout.load_latest()["epoch"] == 1

    only_mid = RunLayout(str(tmp_path / "early"))
    only_mid.save_mid_epoch({"epoch": -1, "position": {"epoch": 0, "step": 4}})
    assert only_mid.has_checkpoint()  # a new run may not overwrite it without --resume
    with pytest.raises(JigcluError, match="only a mid-epoch checkpoint .*epoch 1 after step 4.*--resume"):
        only_mid.latest_checkpoint()
    assert main(["export", str(tmp_path / "early"), str(tmp_path / "b.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "only a mid-epoch checkpoint" in err


# ------------------------------------------------------------------------------- the loop, in-process


@pytest.mark.parametrize("name", list(TASKS))
def test_stop_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, name):
    """Stopped while training step 2 of epoch 1: the checkpoint records step 3 and loads; no
    metrics line for epoch 1 yet; the resumed run ends bit-for-bit where an uninterrupted one does,
    with every epoch's metrics once and the same numbers (the stopped epoch's sums included)."""
    cfg = lambda: prepare(name, load_config(None, TASKS[name] + [f"output_dir={tmp_path}"]))  # noqa: E731
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(task_class(name)(), cfg(), LocalContext(straight, progress=False))
    with preempt.stop_on_sigterm():  # clears the stop request on the way out
        with pytest.raises(preempt.Preempted, match=r"checkpoint in epoch 2/3 after step 3/\d+ saved; --resume"):
            run(task_of(name, (1, 2)), cfg(), LocalContext(stopped, progress=False))
    assert preempt.requested() is None
    state = RunLayout(str(stopped)).load_latest()
    assert state["epoch"] == 0 and state["position"]["epoch"] == 1 and state["position"]["step"] == 3
    assert [m["epoch"] for m in read_metrics(stopped)] == [0]
    assert [e for e, _f in RunLayout(str(stopped)).checkpoints()] == [0]

    summary = run(task_class(name)(), cfg(), LocalContext(stopped, resume=True, progress=False))
    assert (summary["start_epoch"], summary["start_step"], summary["epochs_run"]) == (1, 3, 2)
    models_equal(straight, stopped)
    a, b = read_metrics(straight), read_metrics(stopped)
    assert [m["epoch"] for m in b] == [0, 1, 2] and b[1]["resumed_at_step"] == 3
    for key in ("loss", "train_loss", "train_top1", "val_top1", "step"):
        assert [m.get(key) for m in a] == [m.get(key) for m in b], key
    assert not list((stopped / "checkpoints").glob("mid_epoch_*"))  # gone once epoch 1 was done


def test_the_global_rng_goes_on_as_if_uninterrupted(tmp_path):
    """Whatever a step draws from the global RNG (dropout, a task's own sampling) after a mid-epoch
    resume is what it would have drawn uninterrupted: the checkpoint's RNG states are restored once
    the epoch's loader iterator exists (a DataLoader draws its base seed when it starts)."""
    cfg = lambda: load_config(None, TASKS["pretrain"] + [f"output_dir={tmp_path}"])  # noqa: E731
    straight, stopped, resumed = [], [], []
    run(task_of("pretrain", draws=straight), cfg(), LocalContext(tmp_path / "a", progress=False))
    with preempt.stop_on_sigterm(), pytest.raises(preempt.Preempted):
        run(task_of("pretrain", (1, 2), draws=stopped), cfg(), LocalContext(tmp_path / "b", progress=False))
    run(task_of("pretrain", draws=resumed), cfg(), LocalContext(tmp_path / "b", resume=True, progress=False))
    assert resumed[0][:2] == (1, 3)
    assert stopped + resumed == straight


def test_periodic_mid_epoch_checkpoints_resume_after_a_crash(tmp_path):
    """``train.checkpoint_every_s``: mid-epoch checkpoints while training (here every step), no
    metrics lines for them; a crash after one resumes from it and still matches an uninterrupted run."""
    from faults import SimulatedCrash

    class CrashAfterMid(LocalContext):
        def checkpoint_mid_epoch(self, state):
            super().checkpoint_mid_epoch(state)
            if state["position"] == {"epoch": 1, "step": 4, "samples": 128}:
                raise SimulatedCrash("after a periodic checkpoint")

    args = TASKS["pretrain"] + [f"output_dir={tmp_path}", "train.checkpoint_every_s=1e-6"]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run(task_class("pretrain")(), load_config(None, TASKS["pretrain"] + [f"output_dir={tmp_path}"]),
        LocalContext(straight, progress=False))
    with pytest.raises(SimulatedCrash):
        run(task_class("pretrain")(), load_config(None, args), CrashAfterMid(crashed, progress=False))
    names = sorted(p.name for p in (crashed / "checkpoints").iterdir())
    assert names == ["epoch_00000.pt", "mid_epoch_00001_step_000003.pt", "mid_epoch_00001_step_000004.pt"]
    assert [m["epoch"] for m in read_metrics(crashed)] == [0]
    run(task_class("pretrain")(), load_config(None, args), LocalContext(crashed, resume=True, progress=False))
    models_equal(straight, crashed)
    assert [m["epoch"] for m in read_metrics(crashed)] == [0, 1, 2]


def test_a_stop_asked_before_the_first_step_saves_nothing(tmp_path):
    cfg = load_config(None, TASKS["pretrain"] + [f"output_dir={tmp_path}"])
    with preempt.stop_on_sigterm():
        preempt.request_stop()
        with pytest.raises(preempt.Preempted, match="before the first step: nothing new to save"):
            run(task_class("pretrain")(), cfg, LocalContext(tmp_path / "run", progress=False))
    assert not RunLayout(str(tmp_path / "run")).has_checkpoint()


# ------------------------------------------------------------------------------- real processes

_BUSY_MAIN_THREAD = """
import os, signal, threading, time, torch
from jigclu import preempt
torch.set_num_threads(1)
previous = []
signal.signal(signal.SIGTERM, lambda signum, frame: previous.append(signum))  # Ray's handler, say
preempt.install_in_worker()
seen = []
def loop():  # the training loop's thread
    while preempt.requested() is None:
        time.sleep(0.002)
    seen.append(time.monotonic())
sent = []
def send():  # from another thread: os.kill of the own pid in the main thread runs the handler at once
    time.sleep(0.2)
    sent.append(time.monotonic())
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=loop, daemon=True).start()
a = torch.randn(4000, 4000)
threading.Thread(target=send, daemon=True).start()
torch.mm(a, a)  # one long C call: the main thread runs no Python (so no handler) until it returns
busy = time.monotonic() - sent[0]  # how long the main thread stayed busy after the signal
time.sleep(0.05)
os.kill(os.getpid(), signal.SIGTERM)  # a second one: the handler that was there before
time.sleep(0.05)
print(seen[0] - sent[0] if seen else None, busy, previous)
"""


def test_a_worker_loop_hears_of_sigterm_while_the_main_thread_is_busy():
    """A Ray Train worker's main thread waits in Ray's C++ task loop and runs Python signal handlers
    only when the controller polls it (every 2 s by default); the training loop, in another thread,
    learns of the SIGTERM at once all the same (the signal wakeup pipe), and a second SIGTERM goes to
    the handler that was there before (Ray's, which exits)."""
    done = subprocess.run([sys.executable, "-c", _BUSY_MAIN_THREAD], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    heard, busy, previous = done.stdout.split(maxsplit=2)
    assert float(busy) > 0.3, "the busy call was too short to tell (a faster machine: a bigger matrix)"
    assert heard != "None" and float(heard) < float(busy) / 2, (heard, busy)
    assert previous.strip() == f"[{int(signal.SIGTERM)}]"


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_sees_each_image_of_the_epoch_once(tmp_path):
    """A real ``jigclu pretrain`` SIGTERMed mid-epoch: exit 143, one line naming the position, a
    mid-epoch checkpoint that loads and no temporary file; ``--resume`` finishes with every epoch's
    metrics once and ends bit-for-bit where an uninterrupted run does (so the stopped epoch's
    remaining steps drew exactly its unseen images, in order)."""
    out = faults_preempt.sigterm_once(tmp_path, fraction=0.4, straight=True)
    assert out.code == preempt.EXIT_TERMINATED, out.stderr
    assert re.fullmatch(r"jigclu: terminated \(SIGTERM\): checkpoint in epoch \d/\d after step \d+/\d+ saved; "
                        r"--resume continues from there\n", out.stderr), out.stderr
    position = out.state["position"]
    assert out.state["epoch"] == position["epoch"] - 1 and 0 < position["step"] <= faults_preempt.STEPS
    assert out.temp_files == [] and out.resumed_code == 0
    epochs = [m["epoch"] for m in read_metrics(out.run_dir)]
    assert epochs == list(range(faults_preempt.EPOCHS))
    assert read_metrics(out.run_dir)[position["epoch"]]["resumed_at_step"] == position["step"]
    models_equal(out.straight_dir, out.run_dir)


@pytest.mark.slow
def test_sigterm_to_the_process_group_spares_the_data_loader_workers(tmp_path):
    """SIGTERM to the whole process group (some container inits, ``kill -TERM -PGID``) reaches the
    DataLoader worker processes too (``data.num_workers=1``): they ignore it, so the step in flight
    gets its batch and the run stops with its checkpoint as usual (a killed data worker fails it)."""
    out = faults_preempt.sigterm_once(tmp_path, fraction=0.4, extra=("data.num_workers=1",), group=True)
    assert out.code == preempt.EXIT_TERMINATED and "position" in out.state, out.stderr
    assert out.stderr.startswith("jigclu: terminated (SIGTERM): checkpoint in epoch") and out.stderr.count("\n") == 1
    assert out.resumed_code == 0
    assert [m["epoch"] for m in read_metrics(out.run_dir)] == list(range(faults_preempt.EPOCHS))


@pytest.mark.slow
def test_a_second_sigterm_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    out = faults_preempt.sigterm_twice(tmp_path)
    assert out.code == preempt.EXIT_TERMINATED, out.stderr
    assert out.stderr.strip().splitlines() == [
        "jigclu: terminated (SIGTERM twice): stopped at once, without a new checkpoint; --resume continues "
        "from the last one"], out.stderr
    assert out.temp_files == [] and out.resumed_code == 0
    assert out.state["epoch"] == 0 and "position" not in out.state  # epoch 0's checkpoint, nothing newer
    assert [m["epoch"] for m in read_metrics(out.run_dir)] == list(range(faults_preempt.TWICE_EPOCHS))


@pytest.mark.slow
def test_sigterm_during_start_up_stops_at_once_and_leaves_no_run(tmp_path):
    """Start-up (loading data, the monitor's random-init baseline) has nothing to save and may take
    long at scale: a SIGTERM then stops at once; a new run leaves no directory behind."""
    out = faults_preempt.sigterm_at_start(tmp_path)
    assert out.code == preempt.EXIT_TERMINATED, out.stderr
    assert out.stderr == ("jigclu: terminated (SIGTERM) during start-up, before the first step: nothing new to "
                          "save\n"), out.stderr
    assert not Path(out.run_dir).exists()


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_of_a_ray_train_worker_stops_the_group_at_one_step(ray_local, tmp_path):
    """One of 2 Ray Train workers SIGTERMed mid-epoch: the group stops at the same step, one mid-epoch
    checkpoint, Ray Train's restart continues from that step (the epoch's metrics say so), no epoch twice."""
    import random

    address = ray_local.get_runtime_context().gcs_address
    row = faults_preempt.row_sigterm_ray_worker(tmp_path, random.Random(7), address=address)
    assert row.ok, row


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.faults  # ~45-60 s: in `make faults` (and its fault-matrix row), left out of `make test` (its budget)
def test_sigterm_of_the_ray_train_driver_stops_its_workers_at_one_step(ray_local, tmp_path):
    """The driver of a 2-worker run SIGTERMed (its pod evicted): its workers stop at one step with a
    mid-epoch checkpoint, it exits 143 with one line; --resume continues from that step."""
    import random

    address = ray_local.get_runtime_context().gcs_address
    row = faults_preempt.row_sigterm_ray_driver(tmp_path, random.Random(8), address=address)
    assert row.ok, row
