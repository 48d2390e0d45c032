"""Offline checks of jigclu.cluster on broken KubeRay manifests: each break of the shipped
RayCluster and RayJob (clusters/kuberay/) is named by its key path (tests/test_cluster.py's helpers).

No cloud account, no Kubernetes: Ray's own KubeRay translation runs in-process.
"""

from __future__ import annotations

import pytest

from tests.test_cluster import KUBERAY_FILES, issues_of, load, only_issue

# ---------------------------------------------------------------- broken KubeRay manifests


@pytest.fixture
def raycluster() -> dict:
    return load(KUBERAY_FILES[0])


@pytest.fixture
def rayjob() -> dict:
    return load(KUBERAY_FILES[1])


def test_kuberay_min_over_max_replicas_is_named(raycluster):
    raycluster["spec"]["workerGroupSpecs"][0]["minReplicas"] = 5
    issue = only_issue(raycluster)
    assert issue.key_path == "spec.workerGroupSpecs[0].minReplicas"
    assert "5 > maxReplicas 4" in issue.message


def test_rayjob_min_over_max_replicas_is_named(rayjob):
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"] = 5
    assert only_issue(rayjob).key_path == "spec.rayClusterSpec.workerGroupSpecs[0].minReplicas"


def test_kuberay_replicas_outside_bounds(raycluster):
    raycluster["spec"]["workerGroupSpecs"][0]["replicas"] = 9
    assert only_issue(raycluster).key_path == "spec.workerGroupSpecs[0].replicas"


def test_kuberay_fractional_gpu_is_named(raycluster):
    resources = raycluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
    resources["limits"]["nvidia.com/gpu"] = "0.5"
    resources["requests"]["nvidia.com/gpu"] = 0.5
    base = "spec.workerGroupSpecs[0].template.spec.containers[0].resources"
    issues = issues_of(raycluster)
    assert [i.key_path for i in issues] == [f"{base}.limits.nvidia.com/gpu", f"{base}.requests.nvidia.com/gpu"]
    assert all("whole number of GPUs" in i.message for i in issues)


@pytest.mark.parametrize(
    "mutate, key_path",
    [
        (lambda s: s.update(enableInTreeAutoscaling=False), "spec.enableInTreeAutoscaling"),
        (lambda s: s["headGroupSpec"].pop("rayStartParams"), "spec.headGroupSpec.rayStartParams"),
        (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
         "spec.headGroupSpec.rayStartParams.num-cpus"),
        (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].pop("image"),
         "spec.workerGroupSpecs[0].template.spec.containers[0].image"),
        (lambda s: s["workerGroupSpecs"][0].pop("maxReplicas"), "spec.workerGroupSpecs[0].maxReplicas"),
        (lambda s: s.update(workerGroupSpecs=[]), "spec.workerGroupSpecs"),
        (lambda s: s.update(rayVersion="2.59.0"), "spec.rayVersion"),
    ],
)
def test_kuberay_fields_we_rely_on(raycluster, mutate, key_path):
    mutate(raycluster["spec"])
    assert only_issue(raycluster).key_path == key_path


def test_rayjob_needs_entrypoint_and_cluster_spec(rayjob):
    del rayjob["spec"]["entrypoint"]
    del rayjob["spec"]["rayClusterSpec"]
    assert {i.key_path for i in issues_of(rayjob)} == {"spec.entrypoint", "spec.rayClusterSpec"}


def test_kuberay_inline_secret_env_is_found(raycluster):
    container = raycluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "WANDB_API_KEY", "value": "0123456789abcdef"}]
    issue = only_issue(raycluster)
    assert issue.key_path == "spec.workerGroupSpecs[0].template.spec.containers[0].env[0].value"


def test_rays_kuberay_translation_catches_bad_quantities(raycluster):
    raycluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "cpu"
    ] = "lots"
    issue = only_issue(raycluster)
    assert issue.key_path == "spec" and "KubeRay" in issue.message
