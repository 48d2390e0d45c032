"""A sweep's winner as a finding: leaders re-run with paired seeds and ranked by their mean, the
report's intervals and words, the promotion scheduler (pause at a rung, resume from the checkpoint),
and the settings that cannot work refused in one line before anything starts."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from jigclu.errors import ConfigError
from tests.test_report import make_sweep, run_report
from tests.test_sweep import DIGITS_SWEEP, FAST
from tune.space import load_sweep


# --- the report: leaders by their mean over seeds (synthetic sweeps) ------------------------------

def _seeded_sweep(tmp_path: Path, a: list[float], b: list[float]) -> Path:
    """Leaders A and B (their search runs: seed 0) and their repeats with seeds 1, 2, plus one loser."""
    params = {"a": {"optim.lr": 0.1, "loss.w_loc": 1.0, "model.grid": 2},
              "b": {"optim.lr": 0.3, "loss.w_loc": 0.5, "model.grid": 2}}
    trials = [{"id": "a", "params": params["a"], "curve": [50, 60, a[0]], "done": True},
              {"id": "b", "params": params["b"], "curve": [50, 60, b[0]], "done": True},
              {"id": "lose", "curve": [40, 41, 42], "done": True}]
    for seed in (1, 2):
        for leader, values in (("a", a), ("b", b)):
            trials.append({"id": f"{leader}{seed}", "params": {**params[leader], "seed": seed, "repeat_of": leader},
                           "curve": [50, 60, values[seed]], "done": True})
    sweep_dir = make_sweep(tmp_path, trials=trials)
    definition = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    definition["repeats"] = {"top_k": 2, "seeds": 3, "confidence": 0.95}
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(definition))
    return sweep_dir


def _report(sweep_dir: Path) -> dict:
    code, out = run_report([str(sweep_dir), "--format", "json"])
    assert code == 0
    return json.loads(out)


def test_winner_is_the_best_mean_over_seeds_not_the_best_single_run(tmp_path):
    # A has the best single run (90) but a mean of 77.3; B's runs are 85, 84, 86: mean 85
    report = _report(_seeded_sweep(tmp_path, a=[90, 70, 72], b=[85, 84, 86]))
    seeds = report["seeds"]
    assert [e["trial_id"] for e in seeds["leaders"]] == ["b", "a"]
    assert report["best"]["trial_id"] == "b" and report["top"][0]["trial_id"] == "b"
    assert seeds["leaders"][0]["values"] == [85, 84, 86] and seeds["leaders"][0]["mean"] == pytest.approx(85)
    lo, hi = seeds["leaders"][0]["interval"]
    assert lo < 85 < hi and hi - lo == pytest.approx(2 * 4.302653 * 1.0 / 3 ** 0.5, rel=1e-4)  # t(0.975, 2)
    # repeat runs are seeds of their leader, not configs of their own
    assert {e["trial_id"] for e in report["top"]} == {"a", "b", "lose"}
    comparison = seeds["comparison"]
    assert comparison["winner"] == "b" and comparison["paired_seeds"] == 3 and not comparison["told_apart"]
    assert "cannot be told apart" in comparison["message"]
    # the margins are set against the seed spread the sweep measured
    assert report["margins"]["best"] == pytest.approx(85) and report["margins"]["vs_seeds"]["worst"]


def test_the_report_says_when_the_top_two_are_apart_and_when_noise_was_not_measured(tmp_path):
    report = _report(_seeded_sweep(tmp_path / "x", a=[80, 81, 80.5], b=[85, 86, 85.4]))
    assert report["seeds"]["comparison"]["told_apart"]
    assert report["seeds"]["comparison"]["message"].startswith("trial b beats a by")
    code, text = run_report([str(_seeded_sweep(tmp_path / "y", a=[80, 81, 80.5], b=[85, 86, 85.4]))], width=140)
    assert "Leaders over seeds" in text and "beats a by" in text
    plain = make_sweep(tmp_path / "z", trials=[{"id": "t", "curve": [1, 2, 3], "done": True,
                                                "extra": {"knn_split": "val"}}])
    code, text = run_report([str(plain)], width=140)
    assert "not measured: one run per config" in " ".join(text.split())


# --- bad settings: one line, before anything starts -------------------------------------------------

@pytest.mark.parametrize("overrides,needle", [
    (["num_samples=4", "repeats={top_k: 2, seeds: 3}"], "leaving 0 for the search"),
    (["scheduler.type=pbt", "repeats={top_k: 1, seeds: 2}"], "under scheduler pbt"),
    (["repeats={top_k: 1, seeds: 1}"], "seeds"),
    (["num_samples=8", "config.train.epochs=3", "scheduler.type=promote", "repeats={top_k: 3, seeds: 2}"],
     "takes only 1 of 5"),
])
def test_repeats_that_cannot_work_are_one_line(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_sweep(DIGITS_SWEEP, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_repeats_that_cannot_fit_and_writes_nothing(tmp_path, capsys):
    from jigclu.cli import main

    code = main(["tune", "--config", str(DIGITS_SWEEP), f"output_dir={tmp_path}", "num_samples=3",
                 "repeats={top_k: 2, seeds: 2}"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "repeats need 2 trials" in err
    assert not list(tmp_path.iterdir())


# --- the promotion scheduler's rule (Tune's trial objects, no Ray cluster) --------------------------

class _Controller:
    """What the scheduler uses of Tune's controller: its trials, and stopping one."""

    def __init__(self, trials):
        self.trials, self.stopped = trials, []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        trial.status = "TERMINATED"
        self.stopped.append(trial.trial_id)

    def _mark_trial_to_checkpoint(self, trial):
        pass


def test_promotion_pauses_first_arrivals_and_promotes_the_best_later():
    from tune.promotion import PromotionScheduler

    sched = PromotionScheduler(metric="m", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    assert sorted(sched.rungs) == [1, 2]
    trials = [SimpleNamespace(trial_id=t, config={}, status="RUNNING") for t in "abcd"]
    ctl = _Controller(trials)
    decide = {t.trial_id: sched.on_trial_result(ctl, t, {"training_iteration": 1, "m": v})
              for t, v in zip(trials, (10, 5, 30, 1))}
    # a: alone at the rung, paused (ASHA-stop would have let it through); b: behind; c: best of three;
    # d: behind
    assert decide == {"a": "PAUSE", "b": "PAUSE", "c": "CONTINUE", "d": "PAUSE"}
    for t in trials:
        t.status = "PAUSED" if decide[t.trial_id] == "PAUSE" else "RUNNING"
    trials[2].status = "RUNNING"
    # 4 seen at rung 1: the top 2 go on; c went on already, so a (10) is promoted, not b or d
    assert ctl.get_trials() and sched.choose_trial_to_run(ctl).trial_id == "a"
    trials[0].status = "RUNNING"
    assert sched.choose_trial_to_run(ctl) is None and not ctl.stopped  # c and a still run
    trials[0].status = trials[2].status = "TERMINATED"
    assert sched.choose_trial_to_run(ctl) is None and sorted(ctl.stopped) == ["b", "d"]  # nothing left to come
    # repeats are never paused
    rep = SimpleNamespace(trial_id="r", config={"repeat_of": "c", "seed": 1}, status="RUNNING")
    assert sched.on_trial_result(ctl, rep, {"training_iteration": 1, "m": -5}) == "CONTINUE"


# --- end to end: promotion + repeats on a real sweep -------------------------------------------------

def _rows(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


@pytest.mark.ray
@pytest.mark.slow  # about 60 s on 2 CPU cores
def test_promotion_resumes_paused_trials_and_repeats_pair_the_leaders_seeds(ray_local, tmp_path):
    from tune.sweep import run_sweep

    # 6 search trials: the rung at epoch 1 pauses them and promotes the best 2 to epoch 3, the leaders
    sweep = load_sweep(DIGITS_SWEEP, [*FAST, "num_samples=8", "max_concurrent=1", f"output_dir={tmp_path}",
                                      "name=promo", "scheduler.type=promote", "scheduler.reduction_factor=3",
                                      "repeats={top_k: 2, seeds: 2}"])
    summary = run_sweep(sweep, progress=False)
    sweep_dir = Path(summary["sweep_dir"])
    trials = {d.name.removeprefix("trial-"): d for d in sweep_dir.glob("trial-*")}
    params = {t: json.loads((d / "sampled.json").read_text()) for t, d in trials.items()}
    rows = {t: _rows(d) for t, d in trials.items()}
    assert summary["errored"] == 0 and len(trials) == 8
    search = [t for t in trials if "repeat_of" not in params[t]]
    repeats = [t for t in trials if "repeat_of" in params[t]]
    assert len(search) == 6 and len(repeats) == 2

    # every trial's epochs run once, in order: a paused trial went on from its checkpoint, not from epoch 0
    resumed = []
    for t in search:
        assert [r["epoch"] for r in rows[t]] == list(range(len(rows[t])))
        assert [r["training_iteration"] for r in rows[t]] == list(range(1, len(rows[t]) + 1))
        # the first epoch after a pause says which checkpoint it loaded (the actor may be a reused one)
        loaded = [(r["epoch"], r["resumed_from_epoch"]) for r in rows[t] if r.get("resumed_from_epoch") is not None]
        assert all(epoch == source + 1 for epoch, source in loaded), (t, loaded)
        resumed += [t for _ in loaded]
    assert resumed, "no trial was paused at a rung and promoted later"

    # the leaders: the two best full search trials; each repeat is a leader's config with seed 1
    full = [t for t in search if len(rows[t]) == 3]
    best = sorted(full, key=lambda t: -max(r["probe_top1"] for r in rows[t]))[:2]
    assert sorted(params[r]["repeat_of"] for r in repeats) == sorted(best)
    for r in repeats:
        leader = params[r]["repeat_of"]
        assert {k: v for k, v in params[r].items() if k not in ("seed", "repeat_of")} == params[leader]
        assert params[r]["seed"] == 1 and len(rows[r]) == 3
        assert yaml.safe_load((trials[r] / "config.yaml").read_text())["seed"] == 1

    # the report ranks the leaders by their mean over two seeds, and the test split scored that winner
    report = _report(sweep_dir)
    means = {e["trial_id"]: e["mean"] for e in report["seeds"]["leaders"]}
    assert sorted(means) == sorted(best) and report["best"]["trial_id"] == max(means, key=means.get)
    scored = json.loads((sweep_dir / "test_scores.json").read_text())["trials"]
    assert scored[0]["trial_id"] == report["best"]["trial_id"]
