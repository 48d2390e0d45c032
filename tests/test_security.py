"""Security basics (issue #14), each through the real CLI where a user meets it.

* Checkpoints and CIFAR batches load with restricted unpicklers only: a pickle that would run code
  (``__reduce__`` -> ``os.system``, writing a marker file) is refused with one line naming the file,
  the marker never appears, and no loader in ``jigclu/``, ``tune/`` or ``benchmarks/`` unpickles
  without a restriction (read off the source).
* Configs, ``key=value`` overrides and sweeps that carry a credential are refused with one line
  naming the field (never the value) before anything is written.
* The local Ray listens on 127.0.0.1 only: the dashboard's URL, and every listening socket of every
  Ray process (read with psutil).
"""

from __future__ import annotations

import ast
import ipaddress
import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from jigclu.cli import main
from jigclu.config import load_config
from jigclu.context import LocalContext
from jigclu.runs import RunLayout
from tune.layout import SweepLayout
from jigclu.trainers import run_task

REPO = Path(__file__).resolve().parent.parent
DATA = ["data.dataset=digits", "data.image_size=32", "model.width=8", "jigsaw.crop_size=32", "train.progress=false"]
TINY = DATA + ["data.batch_size=32", "data.limit=64", "monitor.knn=false", "train.steps_per_epoch=2"]
SYSTEM = f"{os.system.__module__}.system"  # what the malicious pickles import: posix.system here


class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def write_evil(path: Path, marker: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"epoch": 2, "model": {"backbone.conv1.weight": Evil(marker)}}
    if fmt == "torch":
        torch.save(state, path)
    elif fmt == "torch-legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(state, protocol=int(fmt.removeprefix("pickle-p"))))
    return path


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err.strip()


def assert_refused(code: int, err: str, file: Path, marker: Path) -> None:
    assert not marker.exists(), "the pickled code ran"
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("jigclu: error: refusing ") and str(file) in err, err
    assert "not a jigclu checkpoint" in err and "unsafe" in err and SYSTEM in err, err


# ---------------------------------------------------------------------------- malicious checkpoints

FORMATS = ["torch", "torch-legacy", "pickle-p2", "pickle-p5"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A real one-epoch pretraining run: the checkpoint a resume would fall back to."""
    out = tmp_path_factory.mktemp("pre")
    run_task("pretrain", load_config(None, TINY + ["train.epochs=1", f"output_dir={out}"]),
                 LocalContext(out / "run", progress=False))
    return out / "run"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("command", ["linear", "knn", "export"])
def test_malicious_checkpoint_is_refused_by_every_loader(tmp_path, capsys, command, fmt):
    marker = tmp_path / "pwned"
    evil = write_evil(tmp_path / "evil.pt", marker, fmt)
    downstream = [*DATA, "data.limit=64", "eval.epochs=1", "train.steps_per_epoch=2"]  # linear reads eval.*
    args = {"linear": ["linear", "--no-progress", *downstream, f"output_dir={tmp_path / 'out'}", f"eval.pretrained={evil}"],
            "knn": ["knn", "--checkpoint", str(evil), *DATA],
            "export": ["export", str(evil), str(tmp_path / "backbone.pt")]}[command]
    code, _out, err = cli(capsys, *args)
    assert_refused(code, err, evil, marker)
    assert not (tmp_path / "out").exists() and not (tmp_path / "backbone.pt").exists()


def test_malicious_only_checkpoint_stops_a_resume(tmp_path, capsys):
    """Decision: a planted checkpoint is refused with one line (exit 2), however many good ones
    the run holds; with no other checkpoint there is nothing to fall back to anyway."""
    marker = tmp_path / "pwned"
    evil = write_evil(Path(RunLayout(str(tmp_path / "run")).checkpoint_file(1)), marker, "torch")
    code, _out, err = cli(capsys, "pretrain", "--no-progress", "--resume", *TINY, "train.epochs=2",
                          f"output_dir={tmp_path}", "name=run")
    assert_refused(code, err, evil, marker)


def test_malicious_newest_checkpoint_is_not_resumed_past(pretrained, tmp_path, capsys):
    """A truncated newest checkpoint falls back to the previous one (tests/test_pretrain.py); a
    planted one does not: somebody wrote it, so the run stops there instead of training on."""
    run = tmp_path / "run"
    for file in pretrained.rglob("*"):
        if file.is_file():
            (run / file.relative_to(pretrained)).parent.mkdir(parents=True, exist_ok=True)
            (run / file.relative_to(pretrained)).write_bytes(file.read_bytes())
    marker = tmp_path / "pwned"
    evil = write_evil(Path(RunLayout(str(run)).checkpoint_file(2)), marker, "pickle-p4")
    code, _out, err = cli(capsys, "pretrain", "--no-progress", "--resume", *TINY, "train.epochs=3",
                          f"output_dir={tmp_path}", "name=run")
    assert_refused(code, err, evil, marker)
    assert len(RunLayout(str(run)).read_metrics()) == 1  # nothing trained past the planted file


def test_torn_tune_state_check_reads_opcodes_only(tmp_path):
    marker = tmp_path / "pwned"
    whole = pickle.dumps(Evil(marker))
    (tmp_path / "searcher-state-whole.pkl").write_bytes(whole)
    (tmp_path / "searcher-state-torn.pkl").write_bytes(whole[:-3])
    assert SweepLayout(str(tmp_path)).set_aside_torn_state() == ["searcher-state-torn.pkl"]
    assert not marker.exists()


# the calls that unpickle: module name -> functions that unpickle untrusted bytes
_UNPICKLERS = {"pickle": {"load", "loads", "Unpickler"}, "cloudpickle": {"load", "loads"},
               "dill": {"load", "loads"}, "joblib": {"load"}, "_pickle": {"load", "loads"}}


def _unrestricted_loads(source: str, file: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, file)):
        where = f"{file}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module in _UNPICKLERS:
            found += [f"{where} imports {node.module}.{a.name}" for a in node.names
                      if a.name in _UNPICKLERS[node.module]]
        if isinstance(node, ast.ClassDef):  # a restricted Unpickler must say what it allows
            bases = {ast.unparse(b) for b in node.bases}
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if bases & {"pickle.Unpickler", "Unpickler"} and "find_class" not in methods:
                found.append(f"{where} {node.name} subclasses Unpickler without find_class")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner, name = ast.unparse(node.func.value), node.func.attr
        keywords = {k.arg: k.value for k in node.keywords}
        if owner == "torch" and name == "load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{where} torch.load without weights_only=True")
        elif owner in _UNPICKLERS and name in _UNPICKLERS[owner]:
            found.append(f"{where} {owner}.{name}")
        elif owner in ("np", "numpy") and name == "load" and "allow_pickle" in keywords:
            found.append(f"{where} np.load(allow_pickle=...)")
        elif (owner, name) in {("torch.jit", "load"), ("yaml", "load"), ("yaml", "unsafe_load")}:
            found.append(f"{where} {owner}.{name}")
    return found


def test_the_source_scan_finds_unrestricted_loads():
    bad = ("import pickle, torch\nfrom pickle import loads\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
           "pickle.loads(b)\nclass U(pickle.Unpickler):\n    pass\nyaml.load(t)\n")
    assert len(_unrestricted_loads(bad, "bad.py")) == 6
    good = "torch.load(f, map_location='cpu', weights_only=True)\nclass U(pickle.Unpickler):\n" \
           "    def find_class(self, m, n):\n        raise ValueError\nU(f).load()\nyaml.safe_load(t)\n"
    assert _unrestricted_loads(good, "good.py") == []


def test_no_loader_unpickles_without_a_restriction():
    files = [f for d in ("jigclu", "tune", "benchmarks") for f in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 50
    found = [hit for f in files for hit in _unrestricted_loads(f.read_text(), str(f.relative_to(REPO)))]
    assert not found, found


# ------------------------------------------------------------------------- malicious CIFAR batches

@pytest.mark.parametrize("command", ["pretrain", "convert"])
def test_malicious_cifar_batch_is_one_line(tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    root = tmp_path / "cifar"
    root.mkdir()
    for name in ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        (root / name).write_bytes(pickle.dumps({"data": Evil(marker), "labels": [0]}, protocol=2))
    args = (["pretrain", "--no-progress", *TINY, f"data.dataset=cifar10:{root}", f"output_dir={tmp_path / 'out'}"]
            if command == "pretrain" else ["data", "convert", f"cifar10:{root}", str(tmp_path / "out")])
    code, _out, err = cli(capsys, *args)
    assert not marker.exists()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"refusing to load global {SYSTEM}" in err and str(root) in err, err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # no run (or convert) left behind


# ------------------------------------------------------------------------- configs with credentials

# built by concatenation so this file holds no secret-looking literal itself
KEY_ID = "AKIA" + "QWERTYUIOPASDFGH"
SECRET = "wJalr" + "XUtnFEMI/K7MDENG/bPxRfiCY" + "zzSECRETzz"
PEM = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEow" + SECRET + "\n-----END RSA PRIVATE KEY-----"
GCP_JSON = '{"type": "service_account", "' + 'private_key": "' + SECRET + '"}'
CREDENTIALS = {  # (config section, what it holds) -> the field the error must name
    "key_id": ({"storage": f"s3://bucket/{KEY_ID}/runs"}, "storage"),
    "secret_key_name": ({"storage": {"aws_secret_access_key": SECRET}}, "storage.aws_secret_access_key"),
    "s3_uri": ({"storage": f"s3://{KEY_ID}:{SECRET}@bucket/runs"}, "storage"),
    "https_uri": ({"eval": {"pretrained": f"https://jig:{SECRET}@example.org/ckpt.pt"}}, "eval.pretrained"),
    "private_key": ({"data": {"dataset": PEM}}, "data.dataset"),
    "gcp_json": ({"storage": GCP_JSON}, "storage"),
}


def assert_secret_refused(code: int, out: str, err: str, field: str) -> None:
    assert code == 2, (out, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"'{field}'" in err and "credentials belong in the environment" in err and "AWS_ACCESS_KEY_ID" in err, err
    for secret in (KEY_ID, SECRET, "jig:"):
        assert secret not in err and secret not in out


@pytest.mark.parametrize("case", sorted(CREDENTIALS))
def test_config_file_with_a_credential_is_refused(tmp_path, capsys, case):
    doc, field = CREDENTIALS[case]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    code, out, err = cli(capsys, "pretrain", "--dry-run", "--config", str(cfg), *TINY, f"output_dir={tmp_path / 'o'}")
    assert_secret_refused(code, out, err, field)
    assert str(cfg) in err


@pytest.mark.parametrize("case", ["key_id", "s3_uri", "https_uri", "secret_key_name"])
def test_override_with_a_credential_is_refused_before_anything_is_written(tmp_path, capsys, case):
    doc, field = CREDENTIALS[case]
    flat = flatten(doc)
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "pretrain", "--no-progress", *TINY, "train.epochs=1", f"output_dir={out_dir}",
                         *[f"{k}={v}" for k, v in flat.items()])
    assert_secret_refused(code, out, err, field)
    assert not out_dir.exists()


def flatten(doc: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_secret_in_a_comment_is_refused(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"train:\n  epochs: 1  # my key {KEY_ID}\n")
    code, out, err = cli(capsys, "pretrain", "--dry-run", "--config", str(cfg))
    assert code == 2 and "line 2 looks like an AWS access key id" in err and KEY_ID not in err + out, err


SWEEP = {"task": "pretrain", "config": {"data": {"dataset": "digits"}, "train": {"epochs": 1}},
         "space": {"optim.lr": "loguniform 0.01 0.1"}, "metric": "loss", "mode": "min", "num_samples": 1}


@pytest.mark.parametrize("where", ["sweep", "base", "study_storage", "override"])
def test_sweep_with_a_credential_is_refused(tmp_path, capsys, where):
    sweep = yaml.safe_load(yaml.safe_dump(SWEEP))
    sweep["output_dir"] = str(tmp_path / "sweeps")
    overrides: list[str] = []
    field, source = "config.storage", "sweep.yaml"
    if where == "sweep":
        sweep["config"]["storage"] = f"s3://{KEY_ID}:{SECRET}@b/x"
    elif where == "base":
        (tmp_path / "base.yaml").write_text(yaml.safe_dump({"storage": {"aws_secret_access_key": SECRET}}))
        sweep["base"], field, source = "base.yaml", "storage.aws_secret_access_key", "base.yaml"
    elif where == "study_storage":
        sweep["study_storage"], field = f"postgresql://optuna:{SECRET}@db/optuna", "study_storage"
    else:
        overrides, source = [f"config.storage=s3://{KEY_ID}:{SECRET}@b/x"], "override"
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    if overrides:  # the sweep itself is fine: the override is what is refused
        assert cli(capsys, "tune", "--dry-run", "--config", str(tmp_path / "sweep.yaml"))[0] == 0
    code, out, err = cli(capsys, "tune", "--dry-run", "--config", str(tmp_path / "sweep.yaml"), *overrides)
    assert_secret_refused(code, out, err, field)
    assert source in err and not (tmp_path / "sweeps").exists()


def test_shipped_configs_and_clusters_hold_no_credential(capsys):
    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        assert load_config(cfg) is not None
    assert cli(capsys, "cluster", "validate")[0] == 0


# ------------------------------------------------------------------------------- local Ray: loopback

def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def test_loopback_mode_is_set_for_a_local_start_only(monkeypatch):
    """Multi-node runs are untouched: connecting to a cluster sees Ray's own node-IP resolution."""
    import jigclu.ray_session as rt
    from ray._private import ray_constants

    seen = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(rt._LOOPBACK_ENV, raising=False)
    monkeypatch.setattr(rt.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(rt.ray, "init", lambda **kw: seen.append(
        (kw.get("address"), os.environ.get(rt._LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER)))
    before = ray_constants.ENABLE_RAY_CLUSTER
    rt.init_ray(address="ray://head:10001")
    rt.init_ray()
    assert seen == [("ray://head:10001", None, before), ("local", "0", False)]
    assert os.environ.get(rt._LOOPBACK_ENV) is None and ray_constants.ENABLE_RAY_CLUSTER == before


@pytest.mark.ray
def test_local_ray_listens_on_loopback_only(ray_local):
    import psutil  # ships with ray

    node = ray_local._private.worker.global_worker.node
    host, port = node.address_info["webui_url"].rsplit(":", 1)
    assert host == "127.0.0.1" and node.node_ip_address == "127.0.0.1", node.address_info
    listening: dict[str, list[tuple[str, int]]] = {}
    for proc in psutil.Process().children(recursive=True):  # GCS, raylet, dashboard, agents, workers
        try:
            name = " ".join(proc.cmdline())  # whole: a long venv path pushes "dashboard.py" far right
            socks = [(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if socks:
            listening[name] = socks
    dashboard = [socks for name, socks in listening.items() if "dashboard.py" in name]
    assert len(dashboard) == 1 and (host, int(port)) in dashboard[0], listening
    assert any("gcs_server" in name for name in listening) and any("raylet" in name for name in listening), listening
    exposed = {name: [s for s in socks if not _is_loopback(s[0])] for name, socks in listening.items()}
    assert not any(exposed.values()), {name: socks for name, socks in exposed.items() if socks}
