"""Only knobs a task reads: an override or a sweep key the task never reads is one line naming the
key that does that job, before anything starts (jigclu/task_keys.py); and the declaration of what
each task reads matches what a real run of it reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jigclu.cli import main
from jigclu.config import RunConfig, load_config
from jigclu.task_keys import READS, SAME_JOB, is_leaf, reads, section_model, unread_message

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.dataset=digits", "data.image_size=16", "data.limit=64", "model.width=4", "jigsaw.crop_size=16",
        "train.progress=false"]
TINY_DOWNSTREAM = [*TINY, "eval.epochs=1", "eval.batch_size=32", "train.steps_per_epoch=1", "eval.val_limit=20"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def assert_refused(code: int, err: str, needle: str, out_dir: Path) -> None:
    assert code == 2, err
    assert needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out_dir.exists() or list(out_dir.iterdir()) == []  # no run or sweep directory


# ------------------------------------------------------------------------------- trainer overrides


@pytest.mark.parametrize("task,override,needle", [
    ("linear", "optim.lr=5", "linear does not read optim.lr; it reads eval.lr"),
    ("linear", "train.epochs=10", "linear does not read train.epochs; it reads eval.epochs"),
    ("linear", "eval.classifier_lr=1", "linear does not read eval.classifier_lr; it reads eval.lr"),
    ("semi", "data.batch_size=64", "semi does not read data.batch_size; it reads eval.batch_size"),
    ("finetune", "jigsaw.crop_size=32", "finetune does not read jigsaw.crop_size; it reads eval.image_size"),
    ("pretrain", "eval.epochs=3", "pretrain does not read eval.epochs; it reads train.epochs"),
    ("linear", "loss.temperature=0.5", "linear does not read loss.temperature (only pretrain does); "
                                       "it ignores the whole loss section"),
    ("finetune", "eval.crop_scale=0.2", "finetune does not read eval.crop_scale (only linear, semi do); of eval.*"),
    ("linear", "eval.labels=1%", "linear does not read eval.labels (only semi does)"),
    ("pretrain", "eval.pretrained=runs/x", "pretrain does not read eval.pretrained"),
])
def test_an_unread_override_is_one_line_naming_the_key_that_does_the_job(tmp_path, capsys, task, override, needle):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, task, "--dry-run", f"output_dir={out}", override)
    assert_refused(code, err, needle, out)


def test_the_issue_command_is_refused_before_anything_starts(tmp_path):
    """The issue's own command, not a dry run, through the real CLI in a fresh process: refused before Ray or torch
    is even imported, and no run directory. (Without the check it would train a tiny real run.)"""
    out = tmp_path / "out"
    script = ("import sys; from jigclu.cli import main; rc = main(sys.argv[1:]); "
              "print('imported:', *sorted(m for m in ('ray', 'torch', 'jigclu.launch') if m in sys.modules)); "
              "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", script, "linear", "--config", str(ROOT / "configs" / "linear.yaml"),
                           "--no-progress", *TINY_DOWNSTREAM, f"output_dir={out}", "name=bad",
                           "train.epochs=10", "optim.lr=5"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.stdout, err)
    assert err == "jigclu: error: linear does not read train.epochs; it reads eval.epochs"
    assert proc.stdout.strip() == "imported:"
    assert not out.exists()


def test_a_section_given_whole_is_checked_key_by_key(tmp_path, capsys):
    code, _, err = run_cli(capsys, "linear", "--dry-run", f"output_dir={tmp_path}", "optim={lr: 5}")
    assert_refused(code, err, "linear does not read optim.lr; it reads eval.lr", tmp_path)


def test_an_unknown_key_is_still_unknown_not_unread(tmp_path, capsys):
    code, _, err = run_cli(capsys, "linear", "--dry-run", f"output_dir={tmp_path}", "optim.lrr=5")
    assert_refused(code, err, "unknown key 'optim.lrr'", tmp_path)


@pytest.mark.parametrize("task,args,expect", [
    ("linear", ["eval.lr=5", "eval.epochs=10", "eval.batch_size=64", "eval.crop_scale=0.2", "jigsaw.crop_size=32"],
     {"lr": 5.0, "epochs": 10, "batch_size": 64, "crop_scale": 0.2}),
    ("semi", ["--labels", "1%", "eval.classifier_lr=1.5", "eval.label_seed=3"],
     {"classifier_lr": 1.5, "label_seed": 3}),
    ("finetune", ["--protocol", "linear", "eval.image_size=32"], {"protocol": "linear", "image_size": 32}),
])
def test_keys_a_task_reads_are_accepted(tmp_path, capsys, task, args, expect):
    code, out, err = run_cli(capsys, task, "--dry-run", f"output_dir={tmp_path}", "data.dataset=digits", *args)
    assert code == 0, err
    resolved = yaml.safe_load(out.rsplit("# dry run", 1)[0])
    assert {k: resolved["eval"][k] for k in expect} == expect
    assert list(tmp_path.iterdir()) == []


def test_pretrain_keys_are_accepted(tmp_path, capsys):
    code, out, err = run_cli(capsys, "pretrain", "--dry-run", f"output_dir={tmp_path}", "optim.lr=0.2",
                             "loss.temperature=0.5", "train.epochs=3", "monitor.k=5", "data.shuffle_buffer=8")
    assert code == 0, err
    resolved = yaml.safe_load(out.rsplit("# dry run", 1)[0])
    assert (resolved["optim"]["lr"], resolved["loss"]["temperature"], resolved["train"]["epochs"]) == (0.2, 0.5, 3)


# ------------------------------------------------------------------------------------------ sweeps


def write_sweep(tmp_path: Path, task: str, space: dict, config: dict | None = None) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "unread", "task": task, "config": {"data": {"dataset": "digits"},
                                                                              **(config or {})},
                                    "space": space, "num_samples": 2}, sort_keys=False))
    return path


@pytest.mark.parametrize("task,space,config,needle", [
    ("linear", {"optim.lr": "loguniform 0.01 1", "loss.temperature": "uniform 0.1 0.7"}, None,
     "space: linear does not read optim.lr; it reads eval.lr"),
    ("linear", {"eval.lr": "loguniform 0.01 1", "loss.temperature": "uniform 0.1 0.7"}, None,
     "space: linear does not read loss.temperature (only pretrain does); it ignores the whole loss section"),
    ("semi", {"eval.lr": "loguniform 0.01 1"}, {"optim": {"lr": 5}},
     "sweep config: semi does not read optim.lr; it reads eval.lr"),
    ("pretrain", {"eval.lr": "loguniform 0.01 1"}, None, "space: pretrain does not read eval.lr; it reads optim.lr"),
])
def test_a_sweep_over_an_unread_key_is_refused(tmp_path, capsys, task, space, config, needle):
    out = tmp_path / "sweeps"
    code, _, err = run_cli(capsys, "tune", "--config", str(write_sweep(tmp_path, task, space, config)), "--dry-run",
                           f"output_dir={out}")
    assert_refused(code, err, needle, out)


def test_a_sweep_override_of_an_unread_key_is_refused(tmp_path, capsys):
    out = tmp_path / "sweeps"
    sweep = str(ROOT / "tune" / "configs" / "linear_lr.yaml")
    for override in ("train.epochs=3", "config.train.epochs=3"):
        code, _, err = run_cli(capsys, "tune", "--config", sweep, "--dry-run", f"output_dir={out}", override)
        assert_refused(code, err, "sweep config: linear does not read train.epochs; it reads eval.epochs", out)
    code, _, err = run_cli(capsys, "tune", "--config", sweep, "--dry-run", f"output_dir={out}",
                           "config.eval.epochs=3")
    assert code == 0, err


def test_a_sweep_may_start_from_a_recipe_shared_with_pretraining(tmp_path, capsys):
    """``base:`` may be a pretraining recipe (optim, loss, monitor...): only the sweep's own keys are checked."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "shared", "task": "linear",
                                    "base": str(ROOT / "configs" / "fashion_mnist.yaml"),
                                    "space": {"eval.lr": "loguniform 0.01 30"}}))
    code, _, err = run_cli(capsys, "tune", "--config", str(path), "--dry-run", f"output_dir={tmp_path / 'sweeps'}")
    assert code == 0, err


# ----------------------------------------------------------------------- shipped configs still pass


def _task_of(config: Path) -> str:
    return next((t for t in ("linear", "semi", "finetune") if t in config.stem), "pretrain")


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_dry_run(tmp_path, capsys, config):
    code, _, err = run_cli(capsys, _task_of(config), "--config", str(config), "--dry-run", f"output_dir={tmp_path}")
    assert code == 0, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config", sorted((ROOT / "tune" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_passes_dry_run(tmp_path, capsys, config):
    code, _, err = run_cli(capsys, "tune", "--config", str(config), "--dry-run", f"output_dir={tmp_path}")
    assert code == 0, err
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------- the declaration


EVERY_KEY = [f"{s}.{k}" if section_model(s) else s for s in RunConfig.model_fields
             for k in (section_model(s).model_fields if section_model(s) else [None])]


def test_the_declaration_names_real_keys():
    for task, declared in READS.items():
        for key in declared:
            assert is_leaf(key) or section_model(key) is not None, (task, key)
        assert reads(task, "seed") and reads(task, "data.dataset") and reads(task, "scaling.workers")
    for pair in SAME_JOB:
        assert all(is_leaf(key) for key in pair), pair
    # every setting of the config is read by some task: nothing is declared away by mistake
    assert [key for key in EVERY_KEY if not any(reads(t, key) for t in READS)] == []
    assert unread_message("linear", "eval.lr") is None and unread_message("pretrain", "optim.lr") is None


class ReadRecorder:
    """Records every config setting read as an attribute (``cfg.optim.lr``) while it is installed,
    except by the config's own validators (``crop_size % grid`` is checked whatever the task)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: set[str] = set()
        sections = {section_model(s): s for s in RunConfig.model_fields if section_model(s)}
        for model, section in [(RunConfig, ""), *sections.items()]:
            monkeypatch.setattr(model, "__getattribute__", self._getter(section), raising=False)

    def _getter(self, section: str):
        keys = self.keys
        models = [RunConfig, *filter(None, map(section_model, RunConfig.model_fields))]
        validators = {d.func.__code__ for m in models for kind in ("model_validators", "field_validators")
                      for d in getattr(m.__pydantic_decorators__, kind).values()}

        def get(obj, name):
            value = object.__getattribute__(obj, name)
            fields = type(obj).__pydantic_fields__
            if name in fields and not (not section and section_model(name)) \
                    and sys._getframe(1).f_code not in validators:
                keys.add(f"{section}.{name}" if section else name)
            return value

        return get


# Read by the downstream code all three tasks share, with no effect on these tasks: a frozen backbone has no
# classifier_lr (resolve_eval sets None, then the head trains at eval.lr); linear and semi pass eval.protocol
# through untouched (only finetune's picks a protocol); finetune's pad-4 crops take eval.crop_scale and ignore it.
NO_EFFECT = {"linear": {"eval.classifier_lr", "eval.protocol"}, "semi": {"eval.protocol"},
             "finetune": {"eval.crop_scale"}}
# Declared, but read only where a tiny in-process run does not go: Ray Train, a Ray Data stream, a progress bar.
NOT_ON_A_TINY_RUN = {"scaling.gpu", "scaling.max_failures", "scaling.cpus_per_worker", "data.stream_min_images",
                     "data.shuffle_buffer", "data.decode_cpus", "data.decode", "train.progress"}


def test_a_tiny_run_of_each_task_reads_only_what_it_declares(tmp_path, monkeypatch):
    """Catches drift: a trainer that starts reading a key it does not declare (the check would then refuse a
    working knob), or one that stops reading eval.lr / optim.lr."""
    from jigclu.launch import launch

    recorded: dict[str, set[str]] = {}
    overrides = {
        "pretrain": [*TINY, "data.batch_size=32", "data.val_size=20", "train.epochs=1", "train.steps_per_epoch=1",
                     "monitor.k=3", "monitor.train_limit=20", "monitor.test_limit=10", "monitor.probe=true"],
        "linear": [*TINY_DOWNSTREAM, "data.val_size=20"],
        "semi": [*TINY_DOWNSTREAM, "eval.labels=50%"],
        "finetune": [*TINY_DOWNSTREAM, "eval.image_size=16"],
    }
    for task, args in overrides.items():
        cfg = load_config(None, [*args, f"output_dir={tmp_path}", f"name={task}", "device=cpu"])
        if task != "pretrain":
            cfg.eval.pretrained = str(tmp_path / "pretrain")
        recorder = ReadRecorder(monkeypatch)
        launch(task, cfg, progress=False, notify=lambda note: None)
        monkeypatch.undo()
        recorded[task] = recorder.keys
    for task, keys in recorded.items():
        undeclared = sorted(k for k in keys - NO_EFFECT.get(task, set()) if not reads(task, k))
        assert undeclared == [], f"{task} reads {undeclared} but jigclu/task_keys.py says it does not"
        unused = sorted(k for k in EVERY_KEY if reads(task, k) and k not in keys and k not in NOT_ON_A_TINY_RUN)
        assert unused == [], f"jigclu/task_keys.py says {task} reads {unused}, but its run did not"
    assert {"optim.lr", "loss.temperature", "train.epochs", "monitor.k", "data.batch_size"} <= recorded["pretrain"]
    for task in ("linear", "semi", "finetune"):
        assert {"eval.lr", "eval.epochs", "eval.batch_size", "model.arch"} <= recorded[task], task
        assert not {"optim.lr", "train.epochs", "loss.temperature", "data.batch_size"} & recorded[task], task
    assert "eval.labels" in recorded["semi"] and "jigsaw.crop_size" in recorded["linear"]
