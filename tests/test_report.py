"""The sweep report on sweep directories written here for the edge cases (not a sweep, empty, only
errors, still running, interrupted, torn result files) and its outputs (narrow terminals, colour,
Parquet, the CLI): no Ray. The report on one tiny real sweep is in tests/test_report_real_sweep.py."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from tune import report as rep
from tune.report import error_reason, load_sweep_dir

COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|9[0-7]|38;[25])[;m]")


def run_report(argv: list[str], width: int = 100, **console_kw: Any) -> tuple[int, str]:
    buf = io.StringIO()
    console = Console(file=buf, width=width, **console_kw)
    code = rep.main(argv, console=console)
    return code, buf.getvalue()


# --- synthetic sweep directories ----------------------------------------------------------

SPACE = {"optim.lr": "loguniform 0.05 1.0", "loss.w_loc": "uniform 0.25 2.0", "model.grid": "choice [2, 4]"}
TRACEBACK = """Failure # 1 (occurred at 2026-01-01_00-00-00)
\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1, ip=10.0.0.1, actor_id=ab, repr=run_trial)
  File "trainable.py", line 329, in train
    raise skipped from exception_cause(skipped)
  File "pretrain.py", line 167, in run_pretrain
    raise TrainingError(f"loss became {x} at epoch {epoch}")
jigclu.errors.TrainingError: loss became nan at epoch 1 step 3; try a lower optim.lr
"""


def make_sweep(root: Path, name: str = "syn", *, max_t: int = 3, mode: str = "max",
               trials: list[dict[str, Any]] = (), state: bool = True) -> Path:
    """A sweep directory as tune/sweep.py leaves it. Each trial: id, params, curve (metric per
    epoch), done, error (traceback text), status (Ray's, for the experiment state), extra."""
    sweep_dir = root / name
    sweep_dir.mkdir(parents=True)
    definition = {"name": name, "task": "pretrain", "config": {"train": {"epochs": max_t}}, "space": SPACE,
                  "metric": "knn_top1", "mode": mode, "num_samples": max(1, len(trials)), "max_concurrent": 2,
                  "seed": 0, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2.0,
                                           "max_t": None}}
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    now, trial_data = time.time(), []
    for spec in trials:
        tid = spec["id"]
        params = spec.get("params", {"optim.lr": 0.1, "loss.w_loc": 1.0, "model.grid": 2})
        start = spec.get("start", now - 100)
        if spec.get("dir", True):
            d = sweep_dir / f"trial-{tid}"
            d.mkdir()
            (d / "params.json").write_text(json.dumps(params))
            (d / "config.yaml").write_text(yaml.safe_dump({"name": f"{name}-{tid}", "train": {"epochs": max_t},
                                                           "optim": {"lr": params.get("optim.lr")}}))
            lines = []
            curve = spec.get("curve", [])
            for i, value in enumerate(curve, 1):
                record = {"knn_top1": value, "loss": 10.0 / i, "epoch": i - 1, "training_iteration": i,
                          "time_total_s": 2.0 * i, "timestamp": start + 2.0 * i, "trial_id": tid,
                          "done": bool(spec.get("done")) and i == len(curve), "config": params}
                record.update(spec.get("extra", {}))
                lines.append(json.dumps(record))
            text = "\n".join(lines) + ("\n" if lines else "")
            (d / "result.json").write_text(text + spec.get("tail", ""))
            if spec.get("error"):
                (d / "error.txt").write_text(spec["error"])
        runtime = {"start_time": start, "num_failures": spec.get("failures", 1 if spec.get("error") else 0),
                   "error_filename": "error.txt" if spec.get("error") else None}
        static = {"trial_id": tid, "status": spec.get("status", "TERMINATED"), "relative_logdir": f"trial-{tid}",
                  "config": params}
        trial_data.append([json.dumps(static), json.dumps(runtime)])
    if state:
        (sweep_dir / "experiment_state-2026-01-01_00-00-00.json").write_text(
            json.dumps({"trial_data": trial_data, "runner_data": {}, "stats": {"start_time": now - 100}}))
    return sweep_dir


def age(sweep_dir: Path, seconds: float) -> None:
    """Make every file look ``seconds`` old (a sweep nobody writes to any more)."""
    stamp = time.time() - seconds
    for p in sweep_dir.rglob("*"):
        os.utime(p, (stamp, stamp))


# --- not a sweep, empty, only errors --------------------------------------------------------

def test_not_a_sweep_directory_is_exit_2_with_one_line(tmp_path, capsys):
    for target, words in ((tmp_path, "not a sweep directory"), (tmp_path / "missing", "does not exist"),
                          (tmp_path / "file.txt", "not a directory")):
        if target.name == "file.txt":
            target.write_text("x")
        code, out = run_report([str(target)])
        err = capsys.readouterr().err
        assert code == rep.EXIT_UNREADABLE == 2
        assert words in err and err.count("\n") == 1 and err.startswith("jigclu: error: report:")
        assert out == ""


def test_a_trial_directory_reports_its_sweep_acting_on_that_trial(tmp_path):
    sweep_dir = make_sweep(tmp_path, trials=[{"id": "a1", "curve": [50.0], "done": True},
                                             {"id": "b2", "curve": [60.0], "done": True}])
    code, out = run_report([str(sweep_dir / "trial-a1"), "--format", "json"])
    data = json.loads(out)
    assert code == 0 and data["best"]["trial_id"] == "b2" and data["act"]["trial_id"] == "a1"
    assert "no kept checkpoint" in data["act"]["error"]  # these trials reported no checkpoint


def test_unreadable_sweep_yaml_is_exit_2(tmp_path, capsys):
    (tmp_path / "sweep.yaml").write_text("name: [unclosed\n")
    assert run_report([str(tmp_path)])[0] == 2
    assert "cannot read" in capsys.readouterr().err


def test_empty_sweep_is_exit_3_and_says_so(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path, trials=[], state=False)
    code, out = run_report([str(sweep_dir)])
    assert code == rep.EXIT_NO_RESULTS == 3
    assert "this sweep has no trials yet" in out
    code, out = run_report([str(sweep_dir), "--format", "json"])
    data = json.loads(out)
    assert code == 3 and data["status"] == "no_results" and data["exit_code"] == 3
    assert data["top"] == [] and data["best"] is None and data["counts"]["total"] == 0
    assert "no trials yet" in capsys.readouterr().err  # messages also reach people on stderr


def test_only_errored_trials_is_exit_4_with_the_errors_table(tmp_path):
    sweep_dir = make_sweep(tmp_path, trials=[
        {"id": "e1", "error": TRACEBACK, "status": "ERROR"},
        {"id": "e2", "curve": [40.0], "error": TRACEBACK, "status": "ERROR"},  # errored after an epoch
    ])
    code, out = run_report([str(sweep_dir)], width=120)
    assert code == rep.EXIT_NO_SUCCESS == 4
    assert "no trial succeeded: 2 of 2 trials errored" in out
    assert "jigclu.errors.TrainingError: loss became nan at epoch 1 step 3" in out
    assert "trial-e1/error.txt" in out and "ray::" not in out
    data = json.loads(run_report([str(sweep_dir), "--format", "json"])[1])
    problems = {p["trial_id"]: p for p in data["problems"]}
    assert problems["e2"]["epoch"] == 1 and problems["e1"]["epoch"] == 0
    assert problems["e1"]["error_file"] == "trial-e1/error.txt"
    assert problems["e1"]["reason"].startswith("jigclu.errors.TrainingError: loss became nan")
    assert data["status"] == "no_success" and data["counts"]["errored"] == 2


def test_error_reason_picks_the_meaningful_line():
    assert error_reason(TRACEBACK) == \
        "jigclu.errors.TrainingError: loss became nan at epoch 1 step 3; try a lower optim.lr"
    chained = ("Traceback (most recent call last):\n  File x\nValueError: inner\n\nThe above exception was "
               "the direct cause of the following exception:\n\nray.exceptions.RayTaskError(DataError): "
               "ray::ImplicitFunc.train() (pid=3)\n  File y\njigclu.errors.DataError: digits: missing\n"
               "    extra context line\n")
    assert error_reason(chained) == "jigclu.errors.DataError: digits: missing"
    assert error_reason("worker died\n\n") == "worker died"
    assert error_reason("") == "error file is empty"


# --- statuses: finished, stopped, running, pending, interrupted -----------------------------------

def test_best_value_not_last_and_statuses(tmp_path):
    sweep_dir = make_sweep(tmp_path, max_t=3, trials=[
        {"id": "late", "curve": [80.0, 85.0, 86.0], "done": True},        # finished, best = last
        {"id": "peak", "curve": [50.0, 90.0, 60.0], "done": True},        # finished, best 90 at epoch 2
        {"id": "cut", "curve": [30.0], "done": True},                     # stopped by ASHA at epoch 1
        {"id": "err", "curve": [95.0], "error": TRACEBACK, "status": "ERROR"},
    ])
    sweep = load_sweep_dir(sweep_dir)
    assert {t.trial_id: t.status for t in sweep.trials} == \
        {"late": "finished", "peak": "finished", "cut": "stopped", "err": "errored"}
    data = rep.build_report(sweep, importances=False)
    assert [r["trial_id"] for r in data["top"]] == ["err", "peak", "late", "cut"]  # errored ranks too (as Ray)
    peak = data["top"][1]
    assert (peak["best_value"], peak["best_epoch"], peak["last_value"], peak["epochs"]) == (90.0, 2, 60.0, 3)
    assert data["exit_code"] == 0 and data["status"] == "ok"
    reasons = {p["trial_id"]: p["reason"] for p in data["problems"]}
    assert reasons["cut"] == "stopped by ASHA at epoch 1 of 3"
    assert data["counts"] == {"total": 4, "finished": 2, "stopped": 1, "errored": 1, "running": 0,
                              "waiting": 0, "interrupted": 0, "pending": 0}
    assert data["compute_s"] == pytest.approx(6 + 6 + 2 + 2)
    # --top and --metric/--mode: rank by the lowest loss instead
    data = rep.build_report(sweep, top=2, metric="loss", importances=False)
    assert data["ranked_by"] == {"metric": "loss", "mode": "min"} and len(data["top"]) == 2
    assert data["top"][0]["best_value"] == pytest.approx(10.0 / 3)


def test_unknown_metric_is_exit_2(tmp_path, capsys):
    sweep_dir = make_sweep(tmp_path, trials=[{"id": "a", "curve": [1.0], "done": True}])
    assert run_report([str(sweep_dir), "--metric", "nope"])[0] == 2
    assert "no trial reported 'nope'" in capsys.readouterr().err


def test_running_sweep_then_interrupted(tmp_path):
    sweep_dir = make_sweep(tmp_path, max_t=4, trials=[
        {"id": "run1", "curve": [60.0, 70.0], "status": "RUNNING"},
        {"id": "wait", "status": "PENDING", "dir": False},
        {"id": "boot", "status": "RUNNING"},  # started, no epoch reported yet
    ])
    sweep = load_sweep_dir(sweep_dir)
    assert sweep.active
    assert {t.trial_id: t.status for t in sweep.trials} == {"run1": "running", "wait": "pending", "boot": "running"}
    code, out = run_report([str(sweep_dir)], width=60)
    assert code == 0 and "no trial has finished yet" in out and "running" in out

    age(sweep_dir, 3600)  # nobody has written for an hour: the sweep was interrupted
    sweep = load_sweep_dir(sweep_dir)
    assert not sweep.active
    assert {t.trial_id: t.status for t in sweep.trials} == \
        {"run1": "interrupted", "wait": "pending", "boot": "interrupted"}
    code, out = run_report([str(sweep_dir)], width=100)
    assert code == 0 and "interrupted after epoch 2" in out and "to resume" in out


def test_a_trial_whose_process_exited_is_interrupted_at_once(tmp_path):
    import socket
    import subprocess

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)
    host = socket.gethostname()
    sweep_dir = make_sweep(tmp_path, max_t=4, trials=[
        {"id": "gone", "curve": [60.0], "status": "RUNNING", "extra": {"pid": dead_pid, "hostname": host}},
        {"id": "alive", "curve": [50.0], "status": "RUNNING", "extra": {"pid": os.getpid(), "hostname": host}},
    ])
    sweep = load_sweep_dir(sweep_dir)
    assert sweep.active
    assert {t.trial_id: t.status for t in sweep.trials} == {"gone": "interrupted", "alive": "running"}


def test_running_trials_without_results_is_exit_3(tmp_path):
    sweep_dir = make_sweep(tmp_path, trials=[{"id": "boot", "status": "RUNNING"},
                                             {"id": "wait", "status": "PENDING", "dir": False}])
    code, out = run_report([str(sweep_dir)])
    assert code == 3 and "no trial has reported knn_top1 yet (1 running, 1 pending)" in out


def test_torn_and_missing_results_are_read_robustly(tmp_path):
    sweep_dir = make_sweep(tmp_path, trials=[
        {"id": "torn", "curve": [10.0, 20.0], "tail": '{"knn_top1": 99, "training_it', "status": "RUNNING"},
        {"id": "empty", "curve": [], "status": "RUNNING"},
    ], state=False)
    (sweep_dir / "trial-torn" / "result.json").write_text(
        "not json\n" + (sweep_dir / "trial-torn" / "result.json").read_text())
    sweep = load_sweep_dir(sweep_dir)
    torn = next(t for t in sweep.trials if t.trial_id == "torn")
    assert torn.curve("knn_top1") == [(1, 10.0), (2, 20.0)]
    assert any("skipped 1 unreadable line" in n for n in sweep.notes)  # the torn last line is expected
    assert run_report([str(sweep_dir)])[0] == 0


# --- outputs ----------------------------------------------------------------------------------

def test_narrow_terminal_and_no_color(tmp_path, monkeypatch):
    sweep_dir = make_sweep(tmp_path, max_t=30, trials=[
        {"id": f"t{i}", "curve": [float(i + e) for e in range(30 - 7 * i)], "done": True,
         "params": {"optim.lr": 0.1 * (i + 1), "loss.w_loc": 1.5, "model.grid": 4}} for i in range(4)
    ] + [{"id": "bad", "error": TRACEBACK, "status": "ERROR"}])
    monkeypatch.setenv("NO_COLOR", "1")
    code, out = run_report([str(sweep_dir)], width=60, force_terminal=True)
    assert code == 0
    assert not COLOUR.search(out), "NO_COLOR must leave no colour codes"
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    # every line fits, but the commands: each stays one line to copy (the terminal wraps it)
    assert max(len(line) for line in plain.splitlines() if not line.startswith("jigclu ")) <= 60
    assert "Best trial t0" in plain and "Their sampled parameters" in plain  # parameters moved to their own table
    monkeypatch.delenv("NO_COLOR")
    _, coloured = run_report([str(sweep_dir)], width=60, force_terminal=True, color_system="standard")
    assert COLOUR.search(coloured), "status colours are shown when colour is allowed"
    code, out = run_report([str(sweep_dir)], width=200)
    assert "Their sampled parameters" not in out  # wide enough for one table


def test_sparkline_and_names():
    assert rep.sparkline([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == "▁▂▃▄▅▆▇█"
    assert len(rep.sparkline([float(i) for i in range(100)])) == rep.SPARK_MAX
    assert rep.sparkline([5.0, 5.0]) == "▅▅" or set(rep.sparkline([5.0, 5.0])) == {rep.SPARK[4]}
    assert rep.sparkline([1.0], scale=(0.0, 2.0)) in ("▄", "▅")
    assert rep.short_names(["optim.lr", "eval.lr", "loss.w_loc", "model.grid"]) == \
        {"optim.lr": "optim.lr", "eval.lr": "eval.lr", "loss.w_loc": "w_loc", "model.grid": "grid"}
    assert rep.fmt_num(89.99999761) == "90.00" and rep.fmt_num(0.06185716) == "0.06186" and rep.fmt_num(4) == "4"
    assert rep.fmt_duration(3725) == "1h02m" and rep.fmt_duration(65) == "1m05s"


def test_parquet_export_synthetic(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    sweep_dir = make_sweep(tmp_path, trials=[
        {"id": "a", "curve": [1.0, 2.0, 3.0], "done": True, "extra": {"images_per_s": 5, "flag": True}},
        {"id": "b", "curve": [4.0], "done": True},
        {"id": "e", "error": TRACEBACK, "status": "ERROR"},
    ])
    out = tmp_path / "out" / "trials.parquet"
    code, _ = run_report([str(sweep_dir), "--export", str(out)])
    assert code == 0 and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["trials.parquet"]  # no temp file left behind
    table = pq.read_table(out)
    assert table.num_rows == 4  # one per trial-epoch; the errored trial reported none
    names = table.column_names
    assert names[:4] == ["sweep", "trial_id", "status", "epoch"] and names[-1] == "time_total_s"
    assert {"knn_top1", "loss", "images_per_s", "result.epoch", "param.optim.lr", "param.model.grid"} <= set(names)
    assert "flag" not in names and "done" not in names  # booleans are not metrics
    rows = table.to_pylist()
    assert [(r["trial_id"], r["epoch"]) for r in rows] == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
    assert rows[0]["status"] == "finished" and rows[3]["status"] == "stopped"
    assert rows[0]["param.model.grid"] == 2 and rows[0]["result.epoch"] == 0
    assert str(table.schema.field("time_total_s").type) == "double"
    assert table.schema.metadata[b"jigclu.metric"] == b"knn_top1"


def test_plots_need_matplotlib(tmp_path, monkeypatch, capsys):
    sweep_dir = make_sweep(tmp_path, trials=[{"id": "a", "curve": [1.0], "done": True}])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, out = run_report([str(sweep_dir), "--plots", str(tmp_path / "plots")])
    err = capsys.readouterr().err
    assert code == 2 and "--plots needs matplotlib" in err and err.count("\n") == 1
    assert out == "" and not (tmp_path / "plots").exists()


def test_cli_subcommand_and_json_has_no_nan(tmp_path, capsys):
    from jigclu.cli import main as cli_main

    sweep_dir = make_sweep(tmp_path, trials=[
        {"id": "a", "curve": [1.0, float("nan"), 3.0], "done": True},
        {"id": "e", "error": TRACEBACK, "status": "ERROR"},
    ])
    assert cli_main(["report", str(sweep_dir), "--format", "yaml", "--no-importance"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["best"]["trial_id"] == "a" and data["best"]["value"] == 3.0
    assert cli_main(["report", str(tmp_path / "nothing")]) == 2
    assert cli_main(["report", str(sweep_dir), "--format", "json"]) == 0
    text = capsys.readouterr().out

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    data = json.loads(text, parse_constant=no_constants)
    assert data["top"][0]["curve"] == [[1, 1.0], [3, 3.0]]  # the NaN epoch is no point of the curve

