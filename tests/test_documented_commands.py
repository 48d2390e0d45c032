"""Every ``jigclu ...`` command the docs show runs as written.

Commands are extracted from README.md, clusters/README.md, docs/*.md and the KubeRay manifests'
entrypoints (also the part after ``-- `` of a ``ray job submit``), their placeholders filled in.
Commands that start training run with ``--dry-run`` (everything checked offline, nothing started,
nothing written). The others run for real on tiny data, in a scratch directory: ``report`` on a
sweep directory laid out as a sweep leaves it, ``knn`` and ``export`` on a tiny pretrained run (or,
for ``SWEEP@best``, a sweep whose trial kept its checkpoint; with overrides appended that shrink the
data), ``data convert`` on digits, ``cluster validate``
and ``render``; only a report of a cloud URI (no bucket here) is left at parsing.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from jigclu.cli import build_parser, main
from jigclu.config import load_config
from jigclu.context import LocalContext
from jigclu.trainers import run_task

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "clusters" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MANIFESTS = sorted((ROOT / "clusters" / "kuberay").glob("*.yaml"))
STARTS_WORK = {"pretrain", "linear", "semi", "finetune", "tune"}
_SUBCOMMANDS = set(build_parser()._subparsers._group_actions[0].choices)


def _from_text(text: str) -> list[str]:
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if "jigclu " not in line:
            continue
        if "-- jigclu " in line:  # ray job submit ... -- jigclu tune ...
            candidates = [line.split("-- jigclu ", 1)[1].split("`", 1)[0]]
        elif line.startswith("jigclu ") or line.startswith("$ jigclu "):  # a command line of a code block
            candidates = [line.split("jigclu ", 1)[1]]
        else:  # inline code in prose: only full commands (a subcommand and its arguments)
            candidates = [m for m in re.findall(r"`jigclu ([^`]+)`", raw) if len(m.split()) >= 2]
        for command in candidates:
            command = command.split("  #", 1)[0].split(" # ", 1)[0].strip()
            usage = " [--" in command or re.search(r"<(?!run>)[a-z_ ]+>", command) or command.endswith("...")
            if command and not usage and command.split()[0] in _SUBCOMMANDS:
                found.append(command)
    return found


def documented_commands() -> list[tuple[str, str]]:
    commands = []
    for path in DOCS:
        commands += [(path.relative_to(ROOT).as_posix(), c) for c in _from_text(path.read_text())]
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            entry = ((doc or {}).get("spec") or {}).get("entrypoint")
            if entry and "jigclu " in entry:
                commands.append((path.relative_to(ROOT).as_posix(), entry.split("jigclu ", 1)[1]))
        commands += [(path.relative_to(ROOT).as_posix(), c) for c in _from_text(
            "\n".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#")))]
    return commands


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    cfg = load_config(None, ["data.dataset=digits", "data.image_size=32", "data.batch_size=32", "data.limit=64",
                             "model.width=8", "jigsaw.crop_size=32", "train.epochs=1", "monitor.knn=false",
                             "train.progress=false"])
    run_task("pretrain", cfg, LocalContext(out / "run", progress=False))
    return out / "run"


def _sweep_with_winner(sweep_dir: Path, pretrained: Path) -> None:
    """A sweep directory whose one trial kept, as the checkpoint of its ranked epoch, the tiny run's."""
    import json
    import shutil

    from jigclu.runs import RunLayout
    from test_report import make_sweep

    make_sweep(sweep_dir.parent, sweep_dir.name, trials=[{"id": "a", "curve": [55.0], "done": True}])
    result = sweep_dir / "trial-a" / "result.json"
    result.write_text(json.dumps({**json.loads(result.read_text()), "checkpoint_dir_name": "checkpoint_000000"}) + "\n")
    kept = sweep_dir / "trial-a" / "checkpoint_000000"
    kept.mkdir()
    shutil.copy(RunLayout(str(pretrained)).latest_checkpoint(), kept / "state.pt")


def _fill(command: str, pretrained: Path, tmp: Path) -> list[str]:
    subs = {"validate ~/my-cluster.yaml": f"validate {ROOT}/clusters/gcp-gpu.yaml",  # a file the user made
            "runs/<run>": str(pretrained), "<run>": str(pretrained), "$BUCKET": "my-bucket", "YOUR-BUCKET": "my-bucket",
            "$SWEEP": "pretrain_fashion", "configs/best.yaml": "configs/demo.yaml", "$GCP_PROJECT": "my-project",
            "\"$AMI\"": "ami-0123456789abcdef0", "~/": f"{tmp}/",
            # tiny data for the commands that run for real
            "data convert fashion_mnist /data/fmnist-parquet": f"data convert digits {tmp}/pq",
            "validate my-cluster.yaml": f"validate {ROOT}/clusters/aws-gpu.yaml"}
    for old, new in subs.items():
        command = command.replace(old, new)
    command = command.replace("pretrain ... ", "pretrain --config configs/demo.yaml ")
    return shlex.split(command)


def test_the_docs_show_commands():
    found = {c.split()[0] for _where, c in documented_commands()}
    assert {"pretrain", "tune", "linear", "semi", "report", "cluster"} <= found, found


# appended to the commands that read a dataset: digits, a few hundred images
TINY_DATA = ["data.dataset=digits", "data.image_size=32", "monitor.train_limit=300", "monitor.test_limit=100"]


def _repo_entries() -> set[str]:
    return {p.name for p in ROOT.iterdir()} | {f"{d}/{p.name}" for d in ("runs", "sweeps") if (ROOT / d).is_dir()
                                               for p in (ROOT / d).iterdir()}


@pytest.mark.parametrize("where,command", documented_commands(), ids=lambda v: v if "/" in v or ".md" in v else None)
def test_documented_command_runs_as_written(where, command, pretrained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    args = _fill(command, pretrained, tmp_path)
    before = _repo_entries()
    if args[0] in STARTS_WORK:  # --dry-run: validated offline, nothing started and nothing written
        code = main([args[0], "--dry-run", *args[1:], f"output_dir={tmp_path / 'out'}"])
        assert code == 0, f"{where}: jigclu {command}\n{capsys.readouterr().err}"
        assert not (tmp_path / "out").exists() and _repo_entries() == before, f"{where}: --dry-run wrote something"
        return
    if args[0] == "report" and "://" in args[1]:  # a bucket this machine cannot reach: it must parse
        build_parser().parse_args(args)
        return
    work = tmp_path / "work"
    work.mkdir()
    if args[0] == "report":  # the sweep directory the command names, as a finished sweep leaves it
        from test_report import make_sweep

        make_sweep(work / Path(args[1]).parent, Path(args[1]).name, trials=[
            {"id": "a", "curve": [40.0, 55.0, 60.0], "done": True}, {"id": "b", "curve": [45.0, 50.0], "done": True}])
    if args[0] in ("export", "knn") and "@" in " ".join(args):  # SWEEP@best: a sweep whose trial kept a checkpoint
        _sweep_with_winner(work / "sweeps" / "pretrain_fashion", pretrained)
    if args[0] == "knn":
        args += TINY_DATA
    if args[0] in ("report", "export", "knn"):  # relative inputs and outputs: in the scratch directory
        monkeypatch.chdir(work)
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, f"{where}: jigclu {command}\n{out.err[-2000:]}"
    assert _repo_entries() == before, f"{where}: wrote into the repository"
    written = {"export": "backbone.pt", "--export": "trials.parquet", "-o": None}
    for flag, name in written.items():
        if flag in args:
            target = work / (name or args[args.index(flag) + 1])
            assert Path(target).exists(), f"{where}: jigclu {command} did not write {target}"
    if args[:2] == ["data", "convert"]:
        assert list((tmp_path / "pq").rglob("*.parquet")), f"{where}: no shards written"
