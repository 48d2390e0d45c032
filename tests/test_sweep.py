"""Sweeps: space validation up front, an ASHA sweep end to end, NaN trials, resume, no leaks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any
from pathlib import Path

import pytest
import yaml

from jigclu.errors import ConfigError
from tune.space import load_sweep, parse_param

DIGITS_SWEEP = Path(__file__).parents[1] / "tune" / "configs" / "pretrain_digits.yaml"
FAST = ["config.train.epochs=3", "config.train.steps_per_epoch=4", "config.data.batch_size=32",
        "config.model.width=8", "config.monitor.train_limit=300", "config.monitor.test_limit=150", "time_budget_s=null"]


def sweep_file(tmp_path: Path, space: dict, **extra) -> Path:
    data = {"name": "t", "task": "pretrain", "config": {"data": {"dataset": "digits", "image_size": 32},
                                                         "jigsaw": {"crop_size": 32}},
            "space": space, **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------ validation (no Ray)

@pytest.mark.parametrize("text,kind,values", [
    ("choice [2, 3, 4]", "choice", (2, 3, 4)),
    ("loguniform 0.005 0.3", "loguniform", (0.005, 0.3)),
    ("uniform 0, 1", "uniform", (0, 1)),
    ("int 5 50", "int", (5, 50)),
    ({"choice": [64, 128]}, "choice", (64, 128)),
])
def test_parse_param(text, kind, values):
    p = parse_param("k", text)
    assert (p.kind, p.values) == (kind, values)


@pytest.mark.parametrize("space,needle", [
    ({"optim.lrr": "uniform 0.1 0.2"}, "unknown key 'optim.lrr'"),
    ({"nosuch.lr": "uniform 0.1 0.2"}, "unknown key 'nosuch.lr'"),
    ({"optim": "uniform 0.1 0.2"}, "is a section"),
    ({"model.grid": "choice []"}, "non-empty list"),
    ({"optim.lr": "loguniform 0 0.3"}, "positive bounds"),
    ({"optim.lr": "loguniform -1 0.3"}, "positive bounds"),
    ({"optim.lr": "uniform 0.3 0.1"}, "low < high"),
    ({"optim.lr": "gaussian 0 1"}, "expected '<kind> <args>'"),
    ({"model.grid": "choice [1, 2]"}, "value 1 is invalid"),
    ({"model.grid": "choice [3, 5]"}, "no combination of the space is valid"),
    ({}, "space is empty"),
])
def test_bad_spaces_fail_before_any_trial(tmp_path, space, needle):
    with pytest.raises(ConfigError) as err:
        load_sweep(sweep_file(tmp_path, space))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_partly_invalid_space_is_accepted(tmp_path):
    # grid 3 cannot split a 32 px crop, grid 2 can: trials that draw 3 error, the sweep goes on
    sweep = load_sweep(sweep_file(tmp_path, {"model.grid": "choice [2, 3]", "optim.lr": "loguniform 0.01 1"}))
    assert [p.key for p in sweep.params] == ["model.grid", "optim.lr"]
    with pytest.raises(ConfigError, match="cannot be split"):
        sweep.trial_config({"model.grid": 3, "optim.lr": 0.1})
    assert sweep.trial_config({"model.grid": 2, "optim.lr": 0.1}).optim.lr == 0.1


def test_sweep_overrides_and_unknown_sweep_key(tmp_path):
    sweep = load_sweep(DIGITS_SWEEP, ["num_samples=3", "config.train.epochs=2"])
    assert sweep.spec.num_samples == 3 and sweep.epochs == 2
    with pytest.raises(ConfigError, match="unknown key 'num_sample'"):
        load_sweep(DIGITS_SWEEP, ["num_sample=3"])


def test_define_by_run_asks_optuna():
    import optuna

    sweep = load_sweep(DIGITS_SWEEP)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    trial = study.ask()
    sweep.define_by_run()(trial)
    assert set(trial.params) == {p.key for p in sweep.params}
    assert trial.params["model.grid"] in (2, 4)


# ------------------------------------------------------------------ real sweeps (shared Ray)

def results_of(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.ray
@pytest.mark.slow  # about 30 s on 2 CPU cores
def test_asha_sweep_end_to_end_and_best_config_reruns(ray_local, tmp_path):
    from jigclu.cli import main
    from tune.sweep import run_sweep

    sweep = load_sweep(DIGITS_SWEEP, [*FAST, "num_samples=4", "max_concurrent=1", f"output_dir={tmp_path}",
                                      "name=e2e"])
    summary = run_sweep(sweep, progress=False)
    sweep_dir = Path(summary["sweep_dir"])
    assert summary["trials"] == 4 and summary["errored"] == 0
    assert summary["stopped"] >= 1, "ASHA stopped no trial early"
    assert (sweep_dir / "optuna.db").exists() and (sweep_dir / "sweep.yaml").exists()
    trials = sorted(sweep_dir.glob("trial-*"))
    assert len(trials) == 4
    epochs = {t.name: len(results_of(t)) for t in trials}
    assert max(epochs.values()) == 3 and min(epochs.values()) < 3

    import optuna

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert len(study.trials) == 4

    best = max(trials, key=lambda t: max(r["knn_top1"] for r in results_of(t)))
    cfg = yaml.safe_load((best / "config.yaml").read_text())
    sampled = json.loads((best / "sampled.json").read_text())
    assert cfg["optim"]["lr"] == pytest.approx(sampled["optim.lr"])
    code = main(["pretrain", "--no-progress", "--config", str(best / "config.yaml"),
                 f"output_dir={tmp_path / 'rerun'}", "name=best"])
    assert code == 0
    from jigclu.runs import RunLayout

    assert RunLayout(str(tmp_path / "rerun" / "best")).has_checkpoint()


@pytest.mark.ray
@pytest.mark.slow  # about 20 s on 2 CPU cores
def test_nan_trial_is_recorded_and_the_sweep_goes_on(ray_local, tmp_path):
    from tune.sweep import run_sweep

    path = sweep_file(tmp_path, {"loss.temperature": "choice [0.3, 1e-40]"}, num_samples=4, max_concurrent=2,
                      output_dir=str(tmp_path / "sweeps"), name="nan",
                      scheduler={"type": "none"})
    data = yaml.safe_load(path.read_text())
    data["config"].update(train={"epochs": 1, "steps_per_epoch": 3, "progress": False},
                          data={"dataset": "digits", "image_size": 32, "batch_size": 32},
                          model={"width": 8}, monitor={"train_limit": 200, "test_limit": 100})
    path.write_text(yaml.safe_dump(data))
    summary = run_sweep(load_sweep(path), progress=False)
    assert summary["errored"] >= 1 and summary["finished"] >= 1
    errors = [t for t in Path(summary["sweep_dir"]).glob("trial-*") if (t / "error.txt").exists()]
    assert errors and all("loss became nan" in (t / "error.txt").read_text() for t in errors)


@pytest.mark.ray
@pytest.mark.slow  # about 90 s on 2 CPU cores
def test_nested_ray_train_trials_do_not_leak_resources_and_waiting_is_said(ray_local, tmp_path, monkeypatch, capsys):
    """ASHA stops trials that run a nested Ray Train job; every trial starts and CPUs come back.

    Two trials at a time whose workers need 3 of the 4 CPUs: one trial's Train run waits for the
    other's CPUs. The sweep's log says so and the report shows it as "waiting for resources"
    (tune/waiting.py) while it waits."""
    from tune.report.data import load_sweep_dir
    from tune.sweep import run_sweep

    monkeypatch.setenv("JIGCLU_WAIT_GRACE_S", "2")
    # what this sweep must give back: the CPUs free when it starts (the session's Ray is shared, and an
    # earlier test's actor may still be on its way out)
    before = settled_cpus(ray_local, ray_local.cluster_resources()["CPU"])
    assert before >= 3, f"{before} CPUs free before the sweep: an earlier test holds them ({held(ray_local)})"
    sweep = load_sweep(DIGITS_SWEEP, [*FAST, "num_samples=4", "max_concurrent=2", "trial_mode=ray_train",
                                      "config.scaling.workers=1", "config.monitor.train_limit=100",
                                      "config.monitor.test_limit=50", f"output_dir={tmp_path}", "name=leak",
                                      "config.scaling.cpus_per_worker=3"])
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:  # what `jigclu report` says while the sweep runs
        while not done.wait(1.0):
            try:
                seen.update(t.status for t in load_sweep_dir(tmp_path / "leak").trials)
            except Exception:  # noqa: BLE001 - the sweep directory is still being laid out
                continue

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = run_sweep(sweep, progress=False)
    finally:
        done.set()
        watcher.join()
    assert summary["trials"] == 4 and summary["errored"] == 0, summary
    assert summary["stopped"] >= 1, "ASHA stopped no trial: the leak path was not exercised"
    log = capsys.readouterr().out
    assert "waiting for resources" in log and "Ray Train run is SCHEDULING" in log, log[-3000:]
    assert "waiting" in seen, seen
    assert json.loads((tmp_path / "leak" / "waiting.json").read_text()) == {}  # nothing waits once it ended
    after = settled_cpus(ray_local, before)
    assert after == before, f"the sweep kept {before - after} CPUs: {held(ray_local)}"


def settled_cpus(ray: Any, want: float, wait_s: float = 60.0) -> float:
    """The free CPUs once they reach ``want`` or ``wait_s`` has passed (actors and placement groups
    of ended runs are removed asynchronously)."""
    deadline = time.time() + wait_s
    while time.time() < deadline and ray.available_resources().get("CPU", 0) < want:
        time.sleep(0.5)
    return ray.available_resources().get("CPU", 0)


def held(ray: Any) -> str:
    """Who holds resources now: the live actors and placement groups, for a failure message."""
    from ray.util.state import list_actors, list_placement_groups

    actors = [f"{a.class_name} ({a.state})" for a in list_actors(filters=[("state", "!=", "DEAD")])]
    groups = [f"{g.name or g.placement_group_id} ({g.state})" for g in list_placement_groups()
              if g.state != "REMOVED"]
    return f"actors: {', '.join(actors) or 'none'}; placement groups: {', '.join(groups) or 'none'}"


def saved_sweep(sweep_dir: Path) -> dict[str, tuple[str, int]] | None:
    """Tune's saved state in the sweep directory as ``{trial id: (status, epochs)}``: what a resumed
    sweep restores. None while it is missing or half-written (Tune syncs it there every second),
    or when the searcher's saved state is not from the same save (it counts other trials)."""
    import pickle

    try:
        [experiment] = sweep_dir.glob("experiment_state-*.json")  # one driver session so far
        [generator] = sweep_dir.glob("search_gen_state-*.json")  # a pickle, despite its name
        trials = {}
        for trial_json, meta_json in json.loads(experiment.read_text())["trial_data"]:
            trial, meta = json.loads(trial_json), json.loads(meta_json)
            epochs = (meta.get("last_result") or {}).get("training_iteration") or 0
            trials[trial["trial_id"]] = (trial["status"], int(epochs))
        generated = pickle.loads(generator.read_bytes())["counter"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError):
        return None
    return trials if generated == len(trials) else None


def optuna_trials(db: Path) -> int | None:
    """The number of trials in the study's SQLite file, read-only (None while it is locked)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.Error:
        return None


@pytest.mark.ray
@pytest.mark.slow  # about 60 s on 2 CPU cores
def test_killed_sweep_driver_resumes_without_rerunning_finished_trials(ray_local, tmp_path):
    """The driver is SIGKILLed once Tune's saved state holds two finished trials and a third one
    with a checkpoint, and nothing newer (no trial, no Optuna trial) exists: the resumed sweep keeps
    the finished trials, continues the third from its checkpoint, and runs no trial twice."""
    import optuna

    address = ray_local.get_runtime_context().gcs_address
    args = [*FAST, "num_samples=6", "max_concurrent=1", "scheduler.type=none", f"output_dir={tmp_path}", "name=res"]
    from jigclu.ray_session import _LOOPBACK_ENV

    # the shared Ray listens on 127.0.0.1 only: a second driver connects in the same loopback mode
    proc = subprocess.Popen([sys.executable, "-m", "jigclu.cli", "tune", "--no-progress", "--no-report",
                             "--address", address, "--config", str(DIGITS_SWEEP), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, _LOOPBACK_ENV: "0"})
    sweep_dir = tmp_path / "res"
    deadline = time.time() + 300

    def ready() -> tuple[dict, dict, str] | None:
        """(saved state, finished trials' results, the trial to interrupt) once it is time to kill."""
        saved = saved_sweep(sweep_dir)
        if saved is None:
            return None
        finished = [t for t, (status, epochs) in saved.items() if status == "TERMINATED" and epochs == 3]
        running = [t for t, (status, epochs) in saved.items() if status == "RUNNING" and 1 <= epochs < 3]
        if len(finished) < 2 or len(running) != 1 or len(saved) != len(finished) + 1:
            return None
        if {t.name for t in sweep_dir.glob("trial-*")} != {f"trial-{t}" for t in saved}:
            return None  # a trial started after the save
        if optuna_trials(sweep_dir / "optuna.db") != len(saved):
            return None  # the searcher already asked Optuna for the next trial
        texts = {t: (sweep_dir / f"trial-{t}" / "result.json").read_text() for t in finished}
        if any(len(results_of(sweep_dir / f"trial-{t}")) != 3 for t in finished):
            return None
        return saved, texts, running[0]

    found = None
    try:
        while found is None:
            assert time.time() < deadline, f"no moment to kill the driver came; saved: {saved_sweep(sweep_dir)}"
            assert proc.poll() is None, "sweep driver exited before it could be killed"
            os.killpg(proc.pid, signal.SIGSTOP)  # frozen, Tune neither saves nor starts anything while we look
            try:
                found = ready()
            except (OSError, ValueError):  # a file being written
                found = None
            if found is None:
                os.killpg(proc.pid, signal.SIGCONT)
                time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved, done_before, interrupted = found
    resume_at = saved[interrupted][1]  # epochs of the interrupted trial in the saved state
    before = (sweep_dir / f"trial-{interrupted}" / "result.json").read_text()
    time.sleep(2)

    from tune.sweep import run_sweep

    summary = run_sweep(load_sweep(DIGITS_SWEEP, args), resume=True, progress=False)
    assert summary["resumed"] and summary["trials"] == 6
    assert summary["finished"] == 6, summary
    for trial, text in done_before.items():  # finished trials kept their ids and results
        assert (sweep_dir / f"trial-{trial}" / "result.json").read_text() == text
    # no trial ran twice: a trial re-run under a new id leaves its first run as .orphan-trial-*
    assert sorted(p.name for p in sweep_dir.glob(".orphan-trial-*")) == []
    assert len(list(sweep_dir.glob("trial-*"))) == 6
    # the interrupted trial continued from its checkpoint: its epochs go on, they do not restart at 0
    text = (sweep_dir / f"trial-{interrupted}" / "result.json").read_text()
    resumed = [json.loads(line) for line in (text[len(before):] if text.startswith(before) else text).splitlines()
               if line.strip()]
    assert [r["epoch"] for r in resumed] == list(range(resume_at, 3)), (resume_at, before, text)
    assert resumed[0]["training_iteration"] == resume_at + 1
    assert resumed[0]["step"] == 4 * (resume_at + 1)  # the global step continues too
    # the study: one complete Optuna trial per Tune trial, none asked twice or left running
    study = optuna.load_study(study_name="res", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6


@pytest.mark.ray
def test_downstream_linear_sweep_over_learning_rates(ray_local, tmp_path):
    """The linear-evaluation sweep: trials load a pretrained backbone and report val_top1."""
    from jigclu.config import load_config
    from jigclu.context import LocalContext
    from jigclu.trainers import run_task
    from tune.sweep import run_sweep

    pre = tmp_path / "pre"
    run_task("pretrain", load_config(None, ["data.dataset=digits", "data.image_size=32", "data.batch_size=32",
                                    "model.width=8", "jigsaw.crop_size=32", "train.epochs=1",
                                    "train.steps_per_epoch=3", "monitor.knn=false", "train.progress=false"]),
                 LocalContext(pre, progress=False))
    config = Path(__file__).parents[1] / "tune" / "configs" / "linear_lr.yaml"
    sweep = load_sweep(config, ["config.data.dataset=digits", "config.data.image_size=32", "config.data.limit=null",
                                f"config.eval.pretrained={pre}", "config.eval.epochs=2",
                                "config.eval.val_limit=null", "config.train.steps_per_epoch=3",
                                "num_samples=2", f"output_dir={tmp_path}", "name=lin"])
    summary = run_sweep(sweep, progress=False)
    assert summary["trials"] == 2 and summary["errored"] == 0, summary
    for trial in (tmp_path / "lin").glob("trial-*"):
        results = results_of(trial)
        # two epochs each, scored on the validation split, trained at the rate this trial sampled (the
        # protocol's milestones, scaled to 2 epochs, decay it x0.1 for the second)
        assert [r["epoch"] for r in results] == [0, 1] and all("val_top1" in r for r in results), results
        sampled = results[0]["config"]["eval.lr"]
        assert [r["lr_classifier"] for r in results] == pytest.approx([sampled, sampled / 10]), (sampled, results)
        assert yaml.safe_load((trial / "config.yaml").read_text())["eval"]["pretrained"] == str(pre)


def test_torn_tune_state_files_are_set_aside(tmp_path):
    import pickle

    from tune.layout import SweepLayout

    (tmp_path / "search_gen_state-2026-01-01_00-00-00.json").write_bytes(b"")
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text('{"ok": 1}')
    (tmp_path / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps({"a": 1})[:5])
    torn = SweepLayout(str(tmp_path)).set_aside_torn_state()
    assert sorted(torn) == ["search_gen_state-2026-01-01_00-00-00.json", "searcher-state-2026-01-01_00-00-00.pkl"]
    assert (tmp_path / "experiment_state-2026-01-01_00-00-00.json").exists()
    assert (tmp_path / "search_gen_state-2026-01-01_00-00-00.json.torn").exists()


def test_nothing_is_said_to_wait_once_the_sweep_has_ended(tmp_path):
    """Fails if waiting.json keeps a trial the last check saw waiting: it is written only every few
    seconds while the sweep runs, so the sweep's end must clear it (CI saw such a stale entry)."""
    from tune.layout import WAITING
    from tune.waiting import ResourceWait

    callback = ResourceWait("s", str(tmp_path), print, train_trials=True)
    callback.written = {"abc": "its Ray Train run is SCHEDULING"}
    (tmp_path / WAITING).write_text(json.dumps(callback.written))
    callback.on_experiment_end(trials=[])
    assert json.loads((tmp_path / WAITING).read_text()) == {}
