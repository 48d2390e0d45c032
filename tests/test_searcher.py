"""The sweep's searcher after a driver was killed between Tune's state files (tune/searcher.py).

The killed driver asked Optuna for trial ``b`` (so the study holds it, RUNNING) and Tune's
experiment state knows ``b``, but the searcher state on disk was saved before: the resumed
searcher has never heard of ``b``. Ray's OptunaSearch fails the sweep with ``KeyError: 'b'`` on
b's first result, and Ray's ConcurrencyLimiter drops b's completion (b stays RUNNING forever).
"""

from __future__ import annotations

import optuna
import pytest

from tune.searcher import ResumableLimiter, ResumableOptunaSearch, fail_abandoned

COMPLETE, RUNNING, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING,
                           optuna.trial.TrialState.FAIL)


def space(trial) -> None:  # a define-by-run space, as jigclu's sweeps use
    trial.suggest_float("optim.lr", 1e-3, 1.0, log=True)
    trial.suggest_categorical("model.grid", [2, 3])


def searcher(url: str) -> ResumableOptunaSearch:
    return ResumableOptunaSearch(space=space, metric="knn_top1", mode="max", seed=0, study_name="s",
                                 storage=optuna.storages.RDBStorage(url))


def result(config: dict, value: float, epoch: int = 1) -> dict:
    """A result as Tune hands it to the searcher: flattened, the config under ``config/``."""
    return {"knn_top1": value, "training_iteration": epoch, **{f"config/{k}": v for k, v in config.items()}}


@pytest.fixture
def killed_between_saves(tmp_path):
    """(url, searcher state saved before ``b`` was asked, b's config)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = searcher(url)
    config_a = first.suggest("a")
    first.save(str(tmp_path / "searcher-state.pkl"))  # the last searcher save of the killed driver
    config_b = first.suggest("b")  # then the driver asked for b, and Tune saved b: SIGKILL
    restored = searcher(url)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    return url, restored, config_a, config_b


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=url)


def test_a_trial_the_searcher_never_saw_adopts_its_running_optuna_trial(killed_between_saves):
    url, restored, config_a, config_b = killed_between_saves
    asked_for_b = [t.number for t in _study(url).trials if t.state == RUNNING and t.params == config_b]
    restored.on_trial_result("b", result(config_b, 50.0))  # Ray's OptunaSearch: KeyError: 'b'
    restored.on_trial_complete("b", result(config_b, 70.0, epoch=2))
    restored.on_trial_complete("a", result(config_a, 60.0, epoch=2))
    trials = _study(url).trials
    assert [t.state for t in trials] == [COMPLETE, COMPLETE]  # no extra trial, nothing left RUNNING
    b = next(t for t in trials if t.params == config_b)
    assert b.number in asked_for_b and b.value == 70.0 and b.intermediate_values == {1: 50.0}


def test_a_trial_without_a_running_optuna_trial_is_recorded_with_its_parameters(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    fresh = searcher(url)
    config_c = {"optim.lr": 0.123, "model.grid": 3}
    fresh.on_trial_complete("c", result(config_c, 42.0))
    (trial,) = _study(url).trials
    assert trial.state == COMPLETE and trial.params == config_c and trial.value == 42.0


def test_the_limiter_passes_on_the_completion_of_a_trial_it_did_not_know(killed_between_saves):
    url, restored, _config_a, config_b = killed_between_saves
    limiter = ResumableLimiter(restored, max_concurrent=1)
    limiter.live_trials.clear()  # as restored: the limiter's state predates b too
    limiter.on_trial_result("b", result(config_b, 50.0))
    limiter.on_trial_complete("b", result(config_b, 55.0, epoch=2))  # Ray's limiter drops it
    assert {t.state for t in _study(url).trials if t.params == config_b} == {COMPLETE}
    assert not limiter.live_trials


def test_optuna_trials_left_running_once_every_trial_ended_are_marked_failed(killed_between_saves):
    url, restored, config_a, config_b = killed_between_saves
    restored.on_trial_complete("a", result(config_a, 60.0))  # b never ran after the resume
    assert fail_abandoned(_study(url)) == [1]
    assert [t.state for t in _study(url).trials] == [COMPLETE, FAIL]


def test_whole_searcher_state_is_kept_and_only_torn_files_are_set_aside(tmp_path):
    """Tune's search_gen_state-*.json is a pickle despite its name: setting a whole one aside
    made every resumed sweep forget its sample count (it stopped after the trials it had)."""
    import pickle

    from tune.layout import SweepLayout

    (tmp_path / "experiment_state-2026-12-02_01-00-00.json").write_text("{}")
    (tmp_path / "search_gen_state-2026-12-02_01-00-00.json").write_bytes(pickle.dumps({"counter": 2}))
    (tmp_path / "searcher-state-2026-12-02_01-00-00.pkl").write_bytes(pickle.dumps({"trials": {}}))
    (tmp_path / "search_gen_state-2026-12-02_02-00-00.json").write_bytes(pickle.dumps({"counter": 3})[:-4])
    (tmp_path / "experiment_state-2026-12-02_02-00-00.json").write_text('{"trials": [')
    torn = SweepLayout(str(tmp_path)).set_aside_torn_state()
    assert sorted(torn) == ["experiment_state-2026-12-02_02-00-00.json", "search_gen_state-2026-12-02_02-00-00.json"]
    assert (tmp_path / "search_gen_state-2026-12-02_01-00-00.json").exists()
