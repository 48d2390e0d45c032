"""A winner you can act on: ``SWEEP@best``, ``SWEEP@<id>`` and trial directories name the checkpoint
of a trial's ranked value in ``export``, ``knn``, ``eval.pretrained=`` and ``report``.

One tiny real sweep (module fixture, ~20 s on 2 cores) is ranked by ``lr`` (max): the cosine
schedule makes every trial's best epoch its first of two, so the checkpoint that holds the
ranked value is never the newest one, and only a sweep that keeps best-epoch checkpoints can
give it back. The report's printed commands run as printed (tiny overrides appended), and the
exported winner's backbone, scored by the trial's own monitor, reproduces what its ranked epoch
reported. The error lines and a Ray Train trial's pointer are checked on directories laid out here.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from jigclu.checkpoint import load_checkpoint, save_checkpoint
from jigclu.cli import main
from jigclu.errors import JigcluError
from test_report import make_sweep, run_report
from tune.layout import POINTER
from tune.report.winner import parse_reference, resolve_checkpoint, split_choice

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
SWEEP = ["config.train.epochs=2", "config.train.steps_per_epoch=3", "config.data.batch_size=32",
         "config.model.width=8", "config.monitor.train_limit=200", "config.monitor.test_limit=100",
         "time_budget_s=null", "num_samples=2", "max_concurrent=2", "scheduler.type=none", "test_top_k=0",
         "objective=metric", "metric=lr", "mode=max", "name=win"]
# appended to the printed commands so each takes seconds
TINY = {"linear": ["eval.epochs=1", "train.steps_per_epoch=2", "eval.batch_size=64", "train.amp=none", "--no-progress"],
        "semi": ["eval.epochs=1", "train.steps_per_epoch=2", "eval.batch_size=64", "train.amp=none", "--no-progress"],
        "knn": ["monitor.train_limit=200", "monitor.test_limit=100"], "export": []}


@pytest.fixture(scope="module")
def sweep_dir(ray_local, tmp_path_factory) -> Path:
    from tune.space import load_sweep
    from tune.sweep import run_sweep

    out = tmp_path_factory.mktemp("winner")
    summary = run_sweep(load_sweep(ROOT / "tune" / "configs" / "pretrain_digits.yaml",
                                   [*SWEEP, f"output_dir={out / 'sweeps'}"]), progress=False)
    assert summary["trials"] == 2 and summary["finished"] == 2, summary
    return Path(summary["sweep_dir"])


def report_json(location: str) -> dict:
    code, out = run_report([location, "--format", "json", "--no-importance"])
    assert code == 0, out
    return json.loads(out)


@pytest.mark.ray
@pytest.mark.slow  # the module's tiny sweep: ~25 s on 2 CPU cores
def test_best_is_the_reports_winner_and_its_checkpoint_gives_the_ranked_value_back(sweep_dir, tmp_path):
    from jigclu.config import RunConfig, build_config
    from jigclu.models import build_backbone
    from jigclu.data.splits import training_splits
    from jigclu.evaluation.knn import held_out_monitor

    data = report_json(str(sweep_dir))
    best = data["best"]["trial_id"]
    assert data["act"]["trial_id"] == best and data["act"]["error"] is None, data["act"]
    found = resolve_checkpoint(f"{sweep_dir}@best")
    assert found.trial_id == best and found.file == data["act"]["checkpoint"]

    for row in data["top"]:  # every trial: the checkpoint of its ranked epoch, not its newest one
        state = load_checkpoint(resolve_checkpoint(str(sweep_dir / row["dir"])).file)
        assert row["best_epoch"] == 1 and row["epochs"] == EPOCHS, row
        assert state["epoch"] + 1 == row["best_epoch"]
        assert state["metrics"]["lr"] == pytest.approx(row["best_value"])

    out = tmp_path / "winner.pt"
    assert main(["export", f"{sweep_dir}@best", str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    state = load_checkpoint(found.file)
    # scored as its monitor scored it (the trial's config: same bank, same validation split), the exported
    # backbone gives back what the ranked epoch reported
    cfg = build_config(RunConfig, state["config"])
    backbone = build_backbone(cfg.model.arch, cfg.model.width)
    backbone.load_state_dict(exported)
    monitor = held_out_monitor(cfg, *training_splits(cfg))
    scores = monitor.evaluate(backbone, torch.device("cpu"))
    ranked_row = next(r for r in data["top"] if r["trial_id"] == best)
    rows = [json.loads(line) for line in (sweep_dir / ranked_row["dir"] / "result.json").read_text().splitlines()]
    reported = next(r for r in rows if r["training_iteration"] == ranked_row["best_epoch"])
    assert reported["knn_split"] == "val"
    assert scores["knn_top1"] == pytest.approx(reported["knn_top1"], abs=1e-4)
    assert scores["embed_std"] == pytest.approx(reported["embed_std"], rel=1e-4)


@pytest.mark.ray
@pytest.mark.slow
def test_the_reports_commands_run_as_printed(sweep_dir, monkeypatch, capsys):
    monkeypatch.chdir(sweep_dir.parents[1])  # the sweep's path as a user would type it: relative
    given = f"{sweep_dir.parent.name}/{sweep_dir.name}"
    code, text = run_report([given, "--no-importance"], width=300)
    assert code == 0, text
    act = text[text.index("Act on trial"):]
    assert "ranked by its best epoch (1: lr" in act and "its checkpoint of that epoch is kept" in act, act
    commands = [line for line in act.splitlines() if line.startswith("jigclu ")]
    assert [shlex.split(c)[1] for c in commands] == ["linear", "semi", "knn", "export"], commands
    winner = report_json(given)["act"]
    for command in commands:
        argv = shlex.split(command)[1:]
        assert f"{given}/trial-{winner['trial_id']}" in argv or \
            f"eval.pretrained={given}/trial-{winner['trial_id']}" in argv, argv
        if argv[0] in ("linear", "semi"):
            argv.append(f"output_dir={sweep_dir.parents[1] / 'runs'}")
        assert main(argv + TINY[argv[0]]) == 0, (command, capsys.readouterr().err[-2000:])
        assert winner["checkpoint"] in capsys.readouterr().err  # each says which checkpoint it loaded
    assert Path(shlex.split(commands[-1])[-1]).is_file()  # the export
    configs = sorted((sweep_dir.parents[1] / "runs").glob("*/config.yaml"))
    assert len(configs) == 2 and all(f"pretrained: {winner['checkpoint']}" in c.read_text() for c in configs)


# --- directories laid out here (no Ray) -----------------------------------------------------

def with_checkpoints(sweep: Path, trial: str, kept: dict[int, str], pointer_run: str | None = None) -> None:
    """Give ``trial``'s rows their Tune checkpoint names and write the ``kept`` ones: epoch ->
    ``state`` (an in-process trial's state.pt) or ``pointer`` (a Ray Train trial's pointer into
    ``train/<pointer_run>``); the state is a real model's, saved as the trainers save it."""
    from jigclu.models import JigCluModel

    result = sweep / f"trial-{trial}" / "result.json"
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    for row in rows:
        row["checkpoint_dir_name"] = f"checkpoint_{row['training_iteration'] - 1:06d}"
    result.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = JigCluModel("resnet18_small", 8, 2, 16).state_dict()
    for epoch, kind in kept.items():
        row = rows[epoch - 1]
        state = {"model": model, "epoch": row["epoch"], "metrics": row, "task": "pretrain"}
        directory = sweep / f"trial-{trial}" / row["checkpoint_dir_name"]
        if kind == "state":
            save_checkpoint(state, directory / "state.pt")
            continue
        name = f"checkpoint_epoch_{row['epoch']:05d}"
        save_checkpoint(state, sweep / "train" / pointer_run / name / "state.pt")
        directory.mkdir()
        (directory / POINTER).write_text(json.dumps({"run": pointer_run, "checkpoint": name, "epoch": row["epoch"]}))


def test_a_ray_train_trial_resolves_through_its_pointer(tmp_path, capsys):
    sweep = make_sweep(tmp_path, "rt", trials=[{"id": "a", "curve": [70.0, 60.0, 65.0], "done": True}])
    with_checkpoints(sweep, "a", {1: "pointer", 3: "pointer"}, pointer_run="rt-a")
    for reference in (str(sweep / "trial-a"), f"{sweep}@a", f"{sweep}@best"):
        found = resolve_checkpoint(reference)
        assert found.file == str(sweep / "train" / "rt-a" / "checkpoint_epoch_00000" / "state.pt"), reference
    out = tmp_path / "a.pt"
    assert main(["export", f"{sweep}@best", str(out)]) == 0 and out.is_file()
    # the Train run's retention deleted the checkpoint the pointer of the ranked epoch names: one line
    (sweep / "train" / "rt-a" / "checkpoint_epoch_00000" / "state.pt").unlink()
    assert main(["export", f"{sweep}@best", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "ranked by knn_top1 70.00 at epoch 1" in err and "Ray Train run's own retention" in err, err
    assert "checkpoint_000002 (epoch 3, 65.00)" in err


def test_the_ranked_epoch_not_the_newest_and_a_tie_kept_later(tmp_path):
    sweep = make_sweep(tmp_path, "ip", trials=[{"id": "a", "curve": [50.0, 80.0, 60.0], "done": True},
                                                {"id": "b", "curve": [70.0, 70.0, 40.0], "done": True}])
    with_checkpoints(sweep, "a", {2: "state", 3: "state"})
    with_checkpoints(sweep, "b", {2: "state", 3: "state"})  # Tune keeps the later of a tie
    a = resolve_checkpoint(f"{sweep}@best")
    assert a.trial_id == "a" and a.file.endswith("trial-a/checkpoint_000001/state.pt")
    assert load_checkpoint(a.file)["metrics"]["knn_top1"] == 80.0
    b = resolve_checkpoint(f"{sweep}/trial-b")
    assert b.file.endswith("trial-b/checkpoint_000001/state.pt") and "epoch 2, which reported the same value" in b.note
    data = report_json(f"{sweep}@b")
    assert data["act"]["trial_id"] == "b" and data["act"]["epoch"] == 1 and data["act"]["kept_epoch"] == 2


@pytest.mark.parametrize("case,words", [
    ("sweep", "is a sweep directory: name one of its trials"),
    ("unknown", "has no trial zz (its trials: a, b)"),
    ("no-checkpoint", "was deleted: the sweep kept only its newest checkpoints); kept: checkpoint_000002"),
    ("not-ended", "no trial of sweep s has finished yet (trial a leads so far)"),
    ("nothing", "has no trial with knn_top1 yet"),
])
def test_one_line_errors(tmp_path, capsys, case, words):
    status = "RUNNING" if case == "not-ended" else "TERMINATED"
    trials = [] if case == "nothing" else [{"id": "a", "curve": [60.0, 70.0, 65.0], "done": case != "not-ended",
                                            "status": status},
                                           {"id": "b", "curve": [50.0], "done": case != "not-ended", "status": status}]
    sweep = make_sweep(tmp_path, "s", trials=trials)
    if trials:
        with_checkpoints(sweep, "a", {3: "state"})
    reference = {"sweep": str(sweep), "unknown": f"{sweep}@zz"}.get(case, f"{sweep}@best")
    for argv in (["export", reference, str(tmp_path / "x.pt")], ["knn", "--checkpoint", reference],
                 ["linear", f"eval.pretrained={reference}", "--dry-run"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)
    assert not (tmp_path / "x.pt").exists()


def test_what_names_a_sweep_trial(tmp_path):
    sweep = make_sweep(tmp_path, "s", trials=[{"id": "a", "curve": [1.0], "done": True}])
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (tmp_path / "w@best.pt").write_bytes(b"")
    assert parse_reference(str(run)) is None and parse_reference(str(tmp_path / "w@best.pt")) is None
    assert parse_reference(str(sweep / "trial-a")).trial == "a"
    assert parse_reference(f"{sweep}@best").sweep == str(sweep)
    ref = split_choice("s3://bucket/sweeps/s@best?endpoint_override=127.0.0.1:9000&scheme=http")
    assert (ref.sweep, ref.trial) == ("s3://bucket/sweeps/s?endpoint_override=127.0.0.1:9000&scheme=http", "best")
    assert split_choice("runs/r") is None and split_choice("a@b/c") is None
    with pytest.raises(JigcluError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing@best"))


def test_a_sweep_in_object_storage(tmp_path, monkeypatch, capsys):
    """The same forms on an S3 endpoint (moto on 127.0.0.1, a few seconds)."""
    import pyarrow.fs as pafs

    from benchmarks.harness import cluster_box

    sweep = make_sweep(tmp_path / "local", "rt", trials=[{"id": "a", "curve": [70.0, 60.0], "done": True}])
    with_checkpoints(sweep, "a", {1: "pointer", 2: "pointer"}, pointer_run="rt-a")
    s3 = cluster_box.S3Endpoint(tmp_path)
    try:
        s3.create_bucket("bkt")
        pafs.copy_files(str(sweep), "bkt/sweeps/rt", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=s3.filesystem())
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        uri = f"s3://bkt/sweeps/rt?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
        options = uri.split("?", 1)[1]
        pointed = f"s3://bkt/sweeps/rt/train/rt-a/checkpoint_epoch_00000/state.pt?{options}"
        assert resolve_checkpoint(f"s3://bkt/sweeps/rt@best?{options}").file == pointed
        assert resolve_checkpoint(f"s3://bkt/sweeps/rt/trial-a?{options}").file == pointed
        monkeypatch.chdir(tmp_path)
        code, text = run_report([f"s3://bkt/sweeps/rt@a?{options}", "--no-importance"], width=100)
        assert code == 0, text
        [export] = [line for line in text.splitlines() if line.startswith("jigclu export ")]
        assert main(shlex.split(export)[1:]) == 0, capsys.readouterr().err
        assert (tmp_path / "rt-a.pt").is_file()
    finally:
        s3.stop()
