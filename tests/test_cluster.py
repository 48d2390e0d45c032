"""Offline checks of the shipped cluster configs (clusters/) and of jigclu.cluster itself.

No cloud account, no Ray cluster: Ray's own schema and config functions run in-process.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import pytest
import yaml

from jigclu import cluster
from jigclu.cluster import ValidationIssue, render, validate_files, validate_text
from jigclu.errors import ConfigError
from jigclu.secrets import account_id_matches, secret_matches

REPO = Path(__file__).resolve().parent.parent
CLUSTERS = REPO / "clusters"
LAUNCHER_FILES = [CLUSTERS / "aws-gpu.yaml", CLUSTERS / "gcp-gpu.yaml"]
KUBERAY_FILES = [CLUSTERS / "kuberay" / "raycluster.yaml", CLUSTERS / "kuberay" / "rayjob.yaml"]
ALL_FILES = LAUNCHER_FILES + KUBERAY_FILES

# Built by concatenation so this file holds no secret-looking literal itself.
FAKE_ACCESS_KEY = "AKIA" + "QWERTYUIOPASDFGH"
FAKE_ACCOUNT = "4829" + "10375621"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def issues_of(doc: dict) -> list[ValidationIssue]:
    return validate_text(yaml.safe_dump(doc, sort_keys=False), "broken.yaml")


def only_issue(doc: dict) -> ValidationIssue:
    found = issues_of(doc)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- shipped files


def test_default_files_are_the_shipped_yamls():
    assert cluster.default_cluster_files() == sorted(ALL_FILES)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_shipped_file_passes_validation(path):
    assert validate_files([path]) == []


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_shipped_launcher_config_passes_rays_own_validation(path):
    """What `ray up` runs before it calls the cloud, and how the head's autoscaler reads it."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    config = load(path)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises on any problem
    # prepare_config merges the provider defaults shallowly: ours must survive the merge.
    assert prepared["head_setup_commands"][-1] == config["head_setup_commands"][-1]
    assert prepared["setup_commands"][-1] == "pip install -e ~/jigclu"

    node_types = AutoscalingConfig(copy.deepcopy(config), skip_content_hash=True).get_node_type_configs()
    head = node_types.pop(config["head_node_type"])
    assert head.resources.get("GPU", 0) == 0
    assert {n.min_worker_nodes for n in node_types.values()} == {0}, "GPU types autoscale from zero"
    assert all(n.resources["GPU"] >= 1 for n in node_types.values())
    spot = [n for name, n in node_types.items() if "spot" in name]
    on_demand = [n for name, n in node_types.items() if "ondemand" in name]
    assert {n.resources["GPU"] for n in spot} == {1, 4}
    assert on_demand and min(n.priority for n in spot) > max(n.priority for n in on_demand)


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_shipped_kuberay_spec_passes_rays_own_translation(path):
    """KubeRay's in-tree autoscaler turns the RayCluster spec into this config."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    doc = load(path)
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    config = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": doc["metadata"]["name"], "namespace": "default"}, "spec": spec}
    )
    gpu = config["available_node_types"]["gpu-1x"]
    assert (gpu["min_workers"], gpu["max_workers"]) == (1, 4)
    assert gpu["resources"]["GPU"] == 1


def test_raycluster_and_rayjob_describe_the_same_cluster():
    raycluster = load(KUBERAY_FILES[0])["spec"]
    rayjob = load(KUBERAY_FILES[1])["spec"]
    assert rayjob["rayClusterSpec"] == raycluster
    assert rayjob["entrypoint"].startswith("jigclu tune --config tune/configs/")
    assert "scaling.gpu=true" in rayjob["entrypoint"]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_shipped_files_name_no_local_path_or_real_account(path):
    text = path.read_text()
    # Absolute paths may only be ones that exist on every cloud node / in AWS's catalogue.
    absolute = re.findall(r"(?<![\w:./~${}-])/[A-Za-z][\w.-]*(?:/[\w.-]+)*", text)
    assert [p for p in absolute if not p.startswith(("/dev/", "/aws/service/"))] == []
    assert not account_id_matches(text)
    assert not secret_matches(text)


# ---------------------------------------------------------------- broken launcher configs


@pytest.fixture
def aws() -> dict:
    return load(CLUSTERS / "aws-gpu.yaml")


@pytest.fixture
def gcp() -> dict:
    return load(CLUSTERS / "gcp-gpu.yaml")


def test_unknown_top_level_key_is_named(aws):
    aws["max_worker"] = 3
    issue = only_issue(aws)
    assert issue.key_path == "max_worker"
    assert "unknown key" in issue.message and "max_workers" in issue.message


def test_unknown_nested_key_is_named(aws):
    aws["available_node_types"]["gpu_spot_1x"]["min_worker"] = 1
    assert only_issue(aws).key_path == "available_node_types.gpu_spot_1x.min_worker"


def test_missing_head_type_is_named(aws):
    del aws["available_node_types"]["head_cpu"]
    issue = only_issue(aws)
    assert issue.key_path == "head_node_type"
    assert "head_cpu" in issue.message


def test_fractional_gpu_resource_is_named(aws):
    aws["available_node_types"]["gpu_spot_1x"]["resources"]["GPU"] = 0.5
    issue = only_issue(aws)
    assert issue.key_path == "available_node_types.gpu_spot_1x.resources.GPU"
    assert "0.5" in issue.message and "whole number" in issue.message


def test_gpu_instance_without_gpu_resource(aws):
    del aws["available_node_types"]["gpu_spot_4x"]["resources"]["GPU"]
    assert only_issue(aws).key_path == "available_node_types.gpu_spot_4x.resources.GPU"


def test_embedded_access_key_is_found(aws):
    aws["setup_commands"].append(f"export AWS_ACCESS_KEY_ID={FAKE_ACCESS_KEY}")
    issue = only_issue(aws)
    assert issue.key_path == f"setup_commands[{len(aws['setup_commands']) - 1}]"
    assert "AWS access key" in issue.message


def test_secret_in_a_comment_is_found():
    text = (CLUSTERS / "aws-gpu.yaml").read_text()
    text += f"\n# my key: {FAKE_ACCESS_KEY}\n"
    [issue] = validate_text(text, "aws.yaml")
    assert issue.key_path == f"line {len(text.splitlines())}"
    assert "comment" in issue.message


@pytest.mark.parametrize(
    "path, value",
    [
        (("setup_commands",), "aws configure set aws_secret_access_key abc"),
        (("auth", "password"), "hunter2hunter2"),
        (("head_setup_commands",), "-----BEGIN RSA PRIVATE KEY-----"),
        (("head_setup_commands",), "echo " + "ghp_" + "a1B2" * 9),
        (("head_setup_commands",), 'echo \'{"type": "service_account", "private_key": "x"}\' > sa.json'),
    ],
)
def test_other_secrets_are_found(aws, path, value):
    target = aws
    for key in path[:-1]:
        target = target.setdefault(key, {})
    if isinstance(target.get(path[-1]), list):
        target[path[-1]].append(value)
    else:
        target[path[-1]] = value
    issues = issues_of(aws)
    assert issues and all(i.key_path.startswith(path[0]) for i in issues), issues


def test_real_looking_account_id_is_found_but_placeholder_is_not(aws):
    profile = aws["available_node_types"]["gpu_spot_1x"]["node_config"]
    profile["IamInstanceProfile"] = {"Arn": "arn:aws:iam::123456789012:instance-profile/ray"}
    assert issues_of(aws) == []
    profile["IamInstanceProfile"] = {"Arn": f"arn:aws:iam::{FAKE_ACCOUNT}:instance-profile/ray"}
    issue = only_issue(aws)
    assert issue.key_path == "available_node_types.gpu_spot_1x.node_config.IamInstanceProfile.Arn"
    assert "account id" in issue.message


def test_min_workers_over_max_workers_is_named(aws):
    aws["available_node_types"]["gpu_spot_4x"]["min_workers"] = 3
    issue = only_issue(aws)
    assert issue.key_path == "available_node_types.gpu_spot_4x.min_workers"
    assert "3 > max_workers 2" in issue.message


def test_sum_of_min_workers_over_global_max(aws):
    aws["available_node_types"]["gpu_spot_1x"]["min_workers"] = 5
    aws["available_node_types"]["gpu_ondemand_1x"]["min_workers"] = 4
    issue = only_issue(aws)
    assert issue.key_path == "max_workers"
    assert "9 > max_workers 8" in issue.message


def test_setup_must_install_jigclu(aws):
    aws["setup_commands"] = [c for c in aws["setup_commands"] if "~/jigclu" not in c]
    issue = only_issue(aws)
    assert issue.key_path == "setup_commands" and "installs jigclu" in issue.message


def test_editable_install_needs_the_file_mount(aws):
    aws["file_mounts"] = {}
    issue = only_issue(aws)
    assert issue.key_path.startswith("setup_commands[") and "file_mounts" in issue.message


def test_editable_install_with_extras_is_recognised(aws):
    aws["setup_commands"] = [c.replace("-e ~/jigclu", "-e ~/jigclu[dev]") for c in aws["setup_commands"]]
    assert issues_of(aws) == []


def test_validate_document_takes_a_parsed_config(aws):
    assert cluster.validate_document(aws) == []
    aws["head_node_type"] = "nope"
    assert cluster.validate_document(aws)[0][0] == "head_node_type"


def test_ray_pin_must_match_the_client(aws):
    index = next(i for i, c in enumerate(aws["setup_commands"]) if "ray[" in c)
    aws["setup_commands"][index] = aws["setup_commands"][index].replace("2.60.0", "2.59.0")
    issue = only_issue(aws)
    assert issue.key_path == f"setup_commands[{index}]" and "2.59.0" in issue.message


def test_gcp_gpu_vm_needs_terminate_on_maintenance(gcp):
    del gcp["available_node_types"]["gpu_spot_1x"]["node_config"]["scheduling"]["onHostMaintenance"]
    issue = only_issue(gcp)
    assert issue.key_path == "available_node_types.gpu_spot_1x.node_config.scheduling.onHostMaintenance"


def test_gcp_gpu_resource_matches_attached_accelerators(gcp):
    gcp["available_node_types"]["gpu_spot_4x"]["resources"]["GPU"] = 2
    issue = only_issue(gcp)
    assert issue.key_path == "available_node_types.gpu_spot_4x.resources.GPU"
    assert "attaches 4" in issue.message


def test_rays_own_checks_catch_what_ours_do_not(aws):
    aws["provider"]["type"] = "no-such-cloud"
    issue = only_issue(aws)
    assert "Unsupported node provider" in issue.message


# ---------------------------------------------------------------- files and text


def test_missing_and_unparsable_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider: [aws,\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    issues = validate_files([tmp_path / "nope.yaml", bad, empty])
    assert [Path(i.file).name for i in issues] == ["nope.yaml", "bad.yaml", "empty.yaml"]
    assert "no such file" in issues[0].message
    assert issues[1].key_path == "line 2" and "not valid YAML" in issues[1].message
    assert "empty" in issues[2].message


def test_issue_line_format():
    assert str(ValidationIssue("a.yaml", "x.y[0]", "bad")) == "a.yaml: x.y[0]: bad"
    assert str(ValidationIssue("a.yaml", "", "no such file")) == "a.yaml: no such file"


# ---------------------------------------------------------------- render


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(provider="aws"),
        dict(provider="aws", gpu_type="t4", max_workers=3, region="eu-west-1", image_id="ami-0123456789abcdef0"),
        dict(provider="aws", gpu_type="l4", max_workers=16, region="us-east-1", zone="us-east-1a"),
        dict(provider="gcp"),
        dict(provider="gcp", gpu_type="v100", max_workers=2, region="europe-west4", project_id="my-project-42"),
    ],
    ids=lambda k: "-".join(str(v) for v in k.values()),
)
def test_render_output_validates(kwargs):
    text = render(**kwargs)
    assert validate_text(text, "rendered.yaml") == []
    config = yaml.safe_load(text)
    gpu = cluster.GPU_TYPES[kwargs["provider"]][kwargs.get("gpu_type") or cluster.DEFAULT_GPU[kwargs["provider"]]]
    single = config["available_node_types"]["gpu_spot_1x"]
    machine = single["node_config"].get("InstanceType") or single["node_config"]["machineType"]
    assert machine == gpu.single.machine
    assert single["resources"] == {"CPU": gpu.single.cpus, "GPU": 1}
    assert config["max_workers"] == kwargs.get("max_workers", 8)
    if "region" in kwargs:
        assert config["provider"]["region"] == kwargs["region"]
    if "image_id" in kwargs:
        assert "REPLACE" not in text and kwargs["image_id"] in text
    if "project_id" in kwargs:
        assert "YOUR-GCP-PROJECT-ID" not in text
        assert config["provider"]["availability_zone"] == f"{kwargs['region']}-a"
    if kwargs["provider"] == "gcp":
        quad = config["available_node_types"]["gpu_spot_4x"]["node_config"]["guestAccelerators"]
        assert quad == [{"acceleratorType": gpu.accelerator, "acceleratorCount": 4}]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(provider="azure"),
        dict(provider="gcp", gpu_type="a10g"),
        dict(provider="aws", max_workers=0),
        dict(provider="aws", image_id="not-an-ami"),
        dict(provider="aws", project_id="my-project-42"),
        dict(provider="gcp", project_id="Bad_Project"),
    ],
)
def test_render_rejects_bad_input(kwargs):
    with pytest.raises(ConfigError):
        render(**kwargs)


# ---------------------------------------------------------------- command line


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="jigclu")
    cluster.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_validate_default_files_is_clean(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert run_cli("cluster", "validate") == 0
    assert "ok: 4 file(s)" in capsys.readouterr().out


def test_cli_validate_reports_one_line_per_issue(tmp_path, capsys):
    broken = load(CLUSTERS / "aws-gpu.yaml")
    broken["available_node_types"]["gpu_spot_1x"]["resources"]["GPU"] = 0.5
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert run_cli("cluster", "validate", str(path), str(tmp_path / "missing.yaml")) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{path}: available_node_types.gpu_spot_1x.resources.GPU: "
        "0.5 is not a whole number >= 0; Ray counts node resources in integer units",
        f"{tmp_path / 'missing.yaml'}: no such file",
    ]


def test_cli_render_writes_a_valid_file(tmp_path, capsys):
    out = tmp_path / "my-gcp.yaml"
    assert run_cli("cluster", "render", "gcp", "--project-id", "my-project-42", "-o", str(out)) == 0
    assert validate_files([out]) == []
    assert run_cli("cluster", "render", "gcp", "--gpu", "a10g") == 1
    assert "choose one of" in capsys.readouterr().err


def test_cli_cluster_without_subcommand_prints_help(capsys):
    assert run_cli("cluster") == 2
    assert "validate" in capsys.readouterr().out
