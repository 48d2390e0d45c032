"""The report on honest sweeps (docs/report.md, "Is the result real?"): selection on a
validation split with the test split scored once, the random-init baseline and the spread, the
first rung's Spearman correlation with the final objective, importances from the trials' own
final values (flagging parameters sampled at one value), collapsed trials, PBT schedules and the
search algorithm. Synthetic sweep directories (tests/test_report.py's ``make_sweep``): no Ray."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from tests.test_report import COLOUR, TRACEBACK, make_sweep
from tune import report as rep
from tune.report import load_sweep_dir

PLAIN = re.compile(r"\x1b\[[0-9;]*m")


def run_report(argv: list[str], width: int = 120, **console_kw: Any) -> tuple[int, str]:
    buf = io.StringIO()
    code = rep.main(argv, console=Console(file=buf, width=width, **console_kw))
    return code, PLAIN.sub("", buf.getvalue())


def honest_sweep(root: Path, trials: list[dict[str, Any]], *, max_t: int = 3, definition: dict[str, Any] | None = None,
                 test_scores: dict[str, Any] | None = None, name: str = "hon") -> Path:
    """``make_sweep``, then: sweep.yaml updated with ``definition``; each trial's result rows
    updated one by one with its ``rows`` (a dict per epoch: probe_top1, knn_split, config...);
    ``test_scores`` written as test_scores.json."""
    specs = [{k: v for k, v in spec.items() if k != "rows"} for spec in trials]
    for spec in specs:  # a curve the length of the rows when only the rows are given
        spec.setdefault("curve", [50.0] * len(next(t for t in trials if t["id"] == spec["id"]).get("rows", [])))
    sweep_dir = make_sweep(root, name, max_t=max_t, trials=specs)
    d = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    for key, value in (definition or {}).items():
        d[key] = {**d[key], **value} if isinstance(value, dict) and isinstance(d.get(key), dict) else value
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    for spec in trials:
        path = sweep_dir / f"trial-{spec['id']}" / "result.json"
        if not spec.get("rows") or not path.exists():
            continue
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for line, update in zip(lines, spec["rows"]):
            line.update(update)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    if test_scores is not None:
        (sweep_dir / "test_scores.json").write_text(json.dumps(test_scores))
    return sweep_dir


def params(lr: float, w_loc: float = 1.0, grid: int = 2) -> dict[str, Any]:
    return {"optim.lr": lr, "loss.w_loc": w_loc, "model.grid": grid}


PROBE = {"objective": "linear_probe", "metric": "probe_top1", "rung_metric": "knn_top1", "val_size": 0.1,
         "searcher": "tpe"}


def val_rows(probe: list[float], knn: list[float] | None = None, **extra: Any) -> list[dict[str, Any]]:
    knn = knn or [p - 3.0 for p in probe]
    return [{"probe_top1": p, "knn_top1": k, "knn_split": "val", "embed_std": 0.3, "collapsed": 0.0, **extra}
            for p, k in zip(probe, knn)]


# --- 1. val and test side by side ------------------------------------------------------------

def test_selected_on_val_with_test_scored_once(tmp_path):
    scores = {"split": "test", "selected_on": "val", "metric": "probe_top1",
              "trials": [{"trial_id": "best", "rank": 1, "epoch": 3, "metrics": {"knn_top1": 81.2, "probe_top1": 84.0},
                          "queries": 10000}]}
    sweep_dir = honest_sweep(tmp_path, [
        {"id": "best", "rows": val_rows([70.0, 80.0, 86.0]), "done": True, "params": params(0.1)},
        {"id": "other", "rows": val_rows([60.0, 65.0, 70.0]), "done": True, "params": params(0.5)},
    ], definition=PROBE, test_scores=scores)
    data = rep.build_report(load_sweep_dir(sweep_dir), importances=False)
    sel = data["selection"]
    assert (sel["split"], sel["split_source"], sel["ranked_split"], sel["optimistic"]) == ("val", "rows", "val", False)
    assert sel["test_scores"]["selected_on"] == "val" and sel["val_size"] == 0.1
    top = {r["trial_id"]: r for r in data["top"]}
    assert top["best"]["best_value"] == 86.0  # the val value ranks ...
    assert top["best"]["test"] == {"value": 84.0, "metrics": {"knn_top1": 81.2, "probe_top1": 84.0}, "epoch": 3,
                                   "rank": 1, "queries": 10000, "split": "test"}  # ... the test value sits beside it
    assert top["other"]["test"] is None and data["best"]["test"]["value"] == 84.0
    assert not any("selected on the test split" in m for m in data["messages"])

    code, out = run_report([str(sweep_dir)])
    assert code == 0
    header = next(line for line in out.splitlines() if "probe_top1 (val)" in line and "test" in line)
    assert header.index("probe_top1 (val)") < header.index("test")  # the val column, then the test column
    best_row = next(line for line in out.splitlines() if re.match(r"\s*1\s+best\s", line))
    assert "86.00" in best_row and "84.00" in best_row
    other_row = next(line for line in out.splitlines() if re.match(r"\s*2\s+other\s", line))
    assert re.search(r"70\.00\s+-\s", other_row)  # not scored on test
    assert "Best trial best: probe_top1 86.00 (val) at epoch 3" in out
    assert "test: knn_top1 81.20, probe_top1 84.00 (scored once, epoch 3, 10000 queries)" in out
    assert "on val (0.1 of the training images" in out and "test scored once" in out
    assert "objective linear_probe; ASHA rungs on knn_top1" in out


def test_selection_on_test_is_called_optimistic(tmp_path):
    old = make_sweep(tmp_path, trials=[{"id": "a", "curve": [10.0, 20.0, 30.0], "done": True}])  # no knn_split
    data = rep.build_report(load_sweep_dir(old), importances=False)
    assert data["selection"]["split"] == "test" and data["selection"]["split_source"] is None
    assert data["sweep"]["legacy"] and data["selection"]["ranked_split"] is None
    assert any("selected on the test split (there was no validation split), so the best value is optimistic" in m
               for m in data["messages"])
    _, out = run_report([str(old)])
    assert "so the best value is optimistic" in out and "knn_top1 (test)" not in out  # old columns stay as they were

    on_test = honest_sweep(tmp_path, [{"id": "b", "rows": [{"knn_split": "test"}] * 3, "done": True}], name="t")
    data = rep.build_report(load_sweep_dir(on_test), importances=False)
    assert data["selection"]["split"] == "test" and data["selection"]["ranked_split"] == "test"
    assert any("the rows report knn_split test" in m for m in data["messages"])
    _, out = run_report([str(on_test)])
    assert "on test: the best value is optimistic" in out and "knn_top1 (test)" in out


def test_downstream_split_comes_from_sweep_yaml_and_losses_have_none(tmp_path):
    # a downstream trainer scores val_top1 on the validation split when sweep.yaml sets val_size; its
    # rows do not say so
    sweep_dir = honest_sweep(tmp_path, [{"id": "a", "rows": [{"val_top1": 50.0 + i} for i in range(3)],
                                         "done": True}], definition={"task": "linear", "metric": "val_top1",
                                                                     "val_size": 0.1})
    data = rep.build_report(load_sweep_dir(sweep_dir), importances=False)
    assert (data["selection"]["split"], data["selection"]["split_source"]) == ("val", "sweep.yaml")
    assert data["selection"]["ranked_split"] == "val" and not any("optimistic" in m for m in data["messages"])
    # ranked by a training loss: no split to name, nothing said about selecting on test
    old = make_sweep(tmp_path, "loss", trials=[{"id": "b", "curve": [1.0, 2.0, 3.0], "done": True}])
    data = rep.build_report(load_sweep_dir(old), metric="loss", importances=False)
    assert data["selection"]["ranked_split"] is None and not any("optimistic" in m for m in data["messages"])


# --- 2. the random-init baseline and the spread -------------------------------------------------

def test_random_init_baseline_and_margins(tmp_path):
    sweep_dir = honest_sweep(tmp_path, [
        {"id": "a", "curve": [40.0, 90.0, 80.0], "done": True, "extra": {"init_knn_top1": 10.0, "knn_split": "val"}},
        {"id": "b", "curve": [30.0, 40.0, 50.0], "done": True, "extra": {"init_knn_top1": 12.0, "knn_split": "val"}},
        {"id": "c", "curve": [20.0], "done": True, "extra": {"init_knn_top1": 14.0, "knn_split": "val"}},  # stopped
    ])
    m = rep.build_report(load_sweep_dir(sweep_dir), importances=False)["margins"]
    # last values: a 80 (not its best 90), b 50, c 20 (stopped at epoch 1)
    assert (m["best"], m["best_trial"], m["worst"], m["worst_trial"], m["n_trials"]) == (80.0, "a", 20.0, "c", 3)
    assert m["best_minus_worst"] == pytest.approx(60.0)
    init = m["random_init"]
    assert (init["metric"], init["of"], init["n_trials"]) == ("init_knn_top1", "knn_top1", 3)
    assert (init["mean"], init["min"], init["max"]) == (pytest.approx(12.0), 10.0, 14.0)
    assert init["best_minus_mean"] == pytest.approx(68.0)
    _, out = run_report([str(sweep_dir)])
    assert "init_knn_top1 12.00 (mean of 3; 10.00-14.00); best knn_top1 − random init +68.00" in out
    assert "best − worst knn_top1 +60.00 (last values of 3 trials)" in out


# --- 3. does the first rung predict the final objective? ------------------------------------------

def test_spearman_by_hand():
    assert rep.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    assert rep.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert rep.average_ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert rep.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (22.5 ** 0.5))  # ties: average ranks
    assert rep.spearman([5, 5, 5], [1, 2, 3]) is None and rep.spearman([1], [1]) is None
    stats = pytest.importorskip("scipy.stats")
    xs, ys = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0], [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0]
    assert rep.spearman(xs, ys) == pytest.approx(stats.spearmanr(xs, ys).statistic)


def test_rung_correlation_reads_the_first_rung(tmp_path):
    finals = [2.0, 1.0, 4.0, 3.0, 5.0]  # probe_top1 at the last epoch; rung knn at epoch 2 ranks 1..5
    trials = [{"id": f"t{i}", "done": True, "params": params(0.1 * (i + 1)),
               "rows": val_rows([50.0, 60.0, 70.0, 80.0 + f], knn=[50.0 - i, 60.0 + i, 61.0, 62.0])}
              for i, f in enumerate(finals)]
    trials.append({"id": "cut", "done": True, "rows": val_rows([1.0, 99.0], knn=[1.0, 99.0])})  # stopped: left out
    sweep_dir = honest_sweep(tmp_path, trials, max_t=4,
                             definition={**PROBE, "scheduler": {"grace_period": 2, "max_t": 4}})
    rc = rep.build_report(load_sweep_dir(sweep_dir), importances=False)["rung_correlation"]
    # epoch 2's knn ranks the trials 0..4; epoch 1's would rank them the other way round (-0.8)
    per_rung = rc.pop("per_rung")
    assert rc == {"rung_metric": "knn_top1", "rung_epoch": 2, "final_metric": "probe_top1", "n_trials": 5,
                  "spearman": pytest.approx(0.8), "message": None}
    # every rung (2; 4 is max_t), for kNN and for the probe where the rows have it
    assert per_rung[0] == {"epoch": 2, "metric": "knn_top1", "n_trials": 5, "spearman": pytest.approx(0.8)}
    assert {r["epoch"] for r in per_rung} == {2}
    _, out = run_report([str(sweep_dir)])
    assert "rung knn_top1 (epoch 2) vs final probe_top1: Spearman 0.80 over 5 trials" in out

    few = honest_sweep(tmp_path, trials[:2], max_t=4, name="few",
                       definition={**PROBE, "scheduler": {"grace_period": 2, "max_t": 4}})
    rc = rep.build_report(load_sweep_dir(few), importances=False)["rung_correlation"]
    assert rc["spearman"] is None and rc["n_trials"] == 2
    assert "only 2 trials ran all 4 epochs with both; a rank correlation needs at least 3" in rc["message"]
    assert rc["message"] in run_report([str(few)], width=200)[1]


# --- 4. honest importances -----------------------------------------------------------------------

def test_importances_from_final_values_flag_one_valued_params(tmp_path):
    # w_loc sets the first epoch (every trial's best); lr sets the last: importances must follow lr
    lrs, w_locs = [0.05, 0.1, 0.2, 0.4, 0.6, 0.8], [1.6, 0.3, 1.2, 0.5, 1.9, 0.9]
    trials = [{"id": f"t{i}", "done": True, "params": {"optim.lr": lr, "loss.w_loc": w, "model.grid": 4,
                                                       "loss.temperature": 0.1 if i else 0.2},
               "curve": [90.0 + w, 10.0 + 50.0 * lr, 20.0 + 50.0 * lr]} for i, (lr, w) in enumerate(zip(lrs, w_locs))]
    sweep_dir = honest_sweep(tmp_path, trials, definition={
        "searcher": "random", "space": {"optim.lr": "loguniform 0.01 1.0", "loss.w_loc": "uniform 0.25 2.0",
                                        "model.grid": "choice [2, 4]", "loss.temperature": "uniform 0.05 0.5"}})
    assert not (sweep_dir / "optuna.db").exists()  # a random sweep: nothing but the trials' results
    imp = rep.build_report(load_sweep_dir(sweep_dir))["importances"]
    assert imp["source"] == "trial results" and imp["n_trials"] == 6
    assert set(imp["flags"]) == {"model.grid", "loss.temperature"}
    assert imp["flags"]["model.grid"] == "too few distinct values: 4 in 6 of 6 trials"
    assert imp["flags"]["loss.temperature"] == "too few distinct values: 2 among 6 trials"
    assert set(imp["values"]) == {"optim.lr", "loss.w_loc"}  # flagged ones get no bar
    assert imp["values"]["optim.lr"] > imp["values"]["loss.w_loc"]  # the final value, not the best
    _, out = run_report([str(sweep_dir)])
    grid_line = next(line for line in out.splitlines() if line.startswith("grid "))
    assert "too few distinct values: 4 in 6 of 6 trials" in grid_line and "0.000" not in grid_line
    assert "temperature" in out and "optuna-random (Optuna's RandomSampler, seed 0)" in out


def test_importances_use_stopped_trials_last_value_and_say_so(tmp_path):
    trials = [{"id": f"t{i}", "done": True, "params": params(0.1 * (i + 1), 0.3 * (i + 1), 2 + 2 * (i % 2)),
               "curve": [10.0 * i] * (3 if i % 3 else 1)} for i in range(6)]
    data = rep.build_report(load_sweep_dir(honest_sweep(tmp_path, trials)))
    imp = data["importances"]
    assert imp["n_trials"] == 6 and "(2 stopped early by ASHA: their value at the epoch they stopped)" in \
        imp["objective"]


# --- 5. collapsed trials -------------------------------------------------------------------------

def test_collapsed_trials_show_why(tmp_path):
    sweep_dir = honest_sweep(tmp_path, [
        {"id": "ok", "rows": val_rows([50.0, 60.0, 70.0]), "done": True},
        {"id": "flat", "done": True, "rows": val_rows([20.0, 10.0]) [:1] + [
            {**val_rows([10.0])[0], "collapsed": 1.0, "embed_std": 0.004,
             "collapse_reason": "embedding std 0.004 < 0.02"}]},
        {"id": "boom", "rows": [{**val_rows([5.0])[0], "collapsed": 1.0, "collapse_reason": "kNN at chance"}],
         "error": TRACEBACK, "status": "ERROR"},
    ], definition=PROBE)
    data = rep.build_report(load_sweep_dir(sweep_dir), importances=False)
    problems = {p["trial_id"]: p for p in data["problems"]}
    assert set(problems) == {"flat", "boom"}
    assert problems["boom"]["status"] == "errored" and problems["boom"]["collapsed"] == "kNN at chance"
    assert problems["boom"]["reason"].startswith("jigclu.errors.TrainingError")  # the error says more
    assert problems["flat"]["status"] == "stopped" and problems["flat"]["epoch"] == 2
    assert problems["flat"]["reason"] == "collapsed: embedding std 0.004 < 0.02"
    assert problems["flat"]["collapsed"] == "embedding std 0.004 < 0.02"
    _, out = run_report([str(sweep_dir)])
    assert "Errored, stopped, interrupted and collapsed trials" in out
    flat = next(line for line in out.splitlines() if line.startswith("flat "))
    assert "stopped" in flat and "collapsed: embedding std 0.004 < 0.02" in flat


# --- 6. PBT schedules ----------------------------------------------------------------------------

def test_pbt_schedules_and_initial_configs(tmp_path):
    def cfg(lr: float, t: float) -> dict[str, Any]:
        return {"config": {"optim.lr": lr, "loss.temperature": t}}

    trials = [
        {"id": "p1", "done": True, "curve": [10.0, 20.0, 30.0, 50.0],
         "rows": [cfg(0.1, 0.2), cfg(0.1, 0.2), cfg(0.12, 0.2), cfg(0.12, 0.25)]},
        {"id": "p2", "done": True, "curve": [15.0, 25.0, 35.0, 45.0], "rows": [cfg(0.3, 0.5)] * 4},
        {"id": "p3", "done": True, "curve": [5.0, 6.0, 7.0, 8.0], "rows": [cfg(0.05, 0.1)] * 4},
    ]
    sweep_dir = honest_sweep(tmp_path, trials, max_t=4, definition={
        "space": {"optim.lr": "loguniform 0.01 1.0", "loss.temperature": "uniform 0.05 0.5"},
        "scheduler": {"type": "pbt", "perturbation_interval": 2, "max_t": 4}})
    data = rep.build_report(load_sweep_dir(sweep_dir))
    assert data["schedules"]["p1"] == [{"epoch": 3, "changes": {"optim.lr": [0.1, 0.12]}},
                                       {"epoch": 4, "changes": {"loss.temperature": [0.2, 0.25]}}]
    assert data["schedules"]["p2"] == [] and data["schedules"]["p3"] == []
    assert data["sweep"]["search"]["algorithm"] == "pbt (random initial configs)"
    assert data["sweep"]["scheduler"]["perturbation_interval"] == 2
    assert data["rung_correlation"]["spearman"] is None and "not ASHA" in data["rung_correlation"]["message"]
    assert "PBT's mutations are ignored" in data["importances"]["objective"]
    _, out = run_report([str(sweep_dir)])
    assert "pbt (random initial configs" in out and "PBT (perturbation every 2 epochs, max_t 4)" in out
    assert "PBT schedules: config changes by epoch (perturbation every 2)" in out
    row = next(line for line in out.splitlines() if line.startswith("p1 "))
    assert re.search(r"p1\s+3\s+lr 0\.1000 → 0\.1200", row)
    assert re.search(r"^\s+4\s+temperature 0\.2000 → 0\.2500", out, re.MULTILINE)
    assert "Best trial p1" in out and "PBT changed its config while it trained" in out


def test_pbt_importances_use_each_trials_first_config(tmp_path):
    from tune.report.importance import _params

    sweep_dir = honest_sweep(tmp_path, [
        {"id": "p1", "done": True, "params": {"optim.lr": 0.9}, "curve": [1.0, 2.0],
         "rows": [{"config": {"optim.lr": 0.1}}, {"config": {"optim.lr": 0.7}}]},
    ], max_t=2, definition={"space": {"optim.lr": "loguniform 0.01 1.0"}, "scheduler": {"type": "pbt"}})
    sweep = load_sweep_dir(sweep_dir)
    assert _params(sweep, sweep.trials[0], pbt=True) == {"optim.lr": 0.1}


# --- 7. the search algorithm, and the whole report in a narrow terminal --------------------------

@pytest.mark.parametrize("searcher, words", [("tpe", "Optuna TPE (seed 0)"),
                                             ("random", "optuna-random (Optuna's RandomSampler, seed 0)")])
def test_search_algorithm(tmp_path, searcher, words):
    sweep_dir = honest_sweep(tmp_path, [{"id": "a", "curve": [1.0, 2.0, 3.0], "done": True}],
                             definition={"searcher": searcher})
    data = rep.build_report(load_sweep_dir(sweep_dir), importances=False)
    assert data["sweep"]["search"]["algorithm"] == f"optuna-{searcher}"
    assert words in run_report([str(sweep_dir)])[1]


def test_everything_at_width_80_without_colour(tmp_path, monkeypatch):
    scores = {"split": "test", "selected_on": "val", "metric": "probe_top1",
              "trials": [{"trial_id": "t0", "rank": 1, "epoch": 3, "metrics": {"knn_top1": 81.2, "probe_top1": 84.0},
                          "queries": 10000}]}
    trials = [{"id": f"t{i}", "done": True, "params": params(0.05 * (i + 1), 0.2 + 0.3 * i, 4),
               "rows": val_rows([60.0 - i, 70.0 - i, 86.0 - 3 * i], init_knn_top1=11.0 + i % 2)} for i in range(5)]
    trials.append({"id": "dead", "done": True, "rows": val_rows([20.0]) + [
        {**val_rows([10.0])[0], "collapsed": 1.0, "collapse_reason": "kNN at chance for 2 epochs"}]})
    sweep_dir = honest_sweep(tmp_path, trials, definition=PROBE, test_scores=scores)
    monkeypatch.setenv("NO_COLOR", "1")
    buf = io.StringIO()
    code = rep.main([str(sweep_dir)], console=Console(file=buf, width=80, force_terminal=True))
    raw = buf.getvalue()
    assert code == 0 and not COLOUR.search(raw)
    out = PLAIN.sub("", raw)
    assert max(len(line) for line in out.splitlines() if not line.startswith("jigclu pretrain")) <= 80
    for words in ("probe_top1 (val)", "84.00", "random init", "Spearman", "collapsed: kNN at chance for 2 epochs",
                  "too few distinct values", "scored once"):
        assert words in out, words
    data = json.loads(run_report([str(sweep_dir), "--format", "json"])[1])
    assert data["top"][0]["test"]["value"] == 84.0 and data["importances"]["flags"]["model.grid"].startswith("too few")


def test_trials_the_time_budget_ended_say_so_not_asha(tmp_path):
    sweep_dir = honest_sweep(tmp_path, [
        {"id": "cut", "rows": val_rows([50.0, 60.0])},
        {"id": "asha", "rows": val_rows([40.0])},
        {"id": "full", "rows": val_rows([50.0, 60.0, 70.0]), "done": True},
    ], definition={**PROBE, "time_budget_s": 300})
    (sweep_dir / "budget_stopped.json").write_text(json.dumps(["cut"]))
    problems = {p["trial_id"]: p["reason"] for p in rep.build_report(load_sweep_dir(sweep_dir),
                                                                    importances=False)["problems"]}
    assert problems == {"cut": "stopped by the sweep's time budget (300 s) at epoch 2 of 3",
                        "asha": "stopped by ASHA at epoch 1 of 3"}
