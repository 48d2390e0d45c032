"""KubeRay manifests (``apiVersion: ray.io/v1``, kinds RayCluster and RayJob; see KubeRay's
docs and ``clusters/README.md``).

jigclu's checks come first: in-tree autoscaling is on, worker groups have the replica bounds
elastic training assumes, ``rayStartParams`` are strings, images and ``rayVersion`` match the
Ray this client runs, and GPUs are whole and declared under ``limits``. A manifest that passes
them goes through ``_derive_autoscaling_config_from_ray_cr``, the function KubeRay's in-tree
autoscaler uses to turn a RayCluster into an autoscaling config (it ends in
``validate_config``), and its node types are read as the autoscaler (v2) reads them.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from jigclu.cluster.issues import KeyPath, Problem, is_int, ray_version, short

_RAY_IMAGE = re.compile(r"^(?:docker\.io/)?rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)")


def check_kuberay(doc: dict[str, Any]) -> list[Problem]:
    """Every problem in one RayCluster or RayJob manifest; Ray's translation runs only on a
    clean one, so each mistake is reported once, in our words, with its key path."""
    problems: list[Problem] = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append((("apiVersion",), f"{short(doc.get('apiVersion'))}: use ray.io/v1 (KubeRay 1.x)"))
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        problems.append((("metadata", "name"), "missing; every Kubernetes object needs a name"))
        metadata = {}
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return problems + [(("spec",), "missing or not a mapping")]

    kind = doc.get("kind")
    if kind == "RayCluster":
        cluster_spec, base = spec, ("spec",)
    elif kind == "RayJob":
        entrypoint = spec.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            problems.append((("spec", "entrypoint"), "missing; the command the job runs (e.g. jigclu tune ...)"))
        runtime_env = spec.get("runtimeEnvYAML")
        if runtime_env is not None:
            try:
                parsed = yaml.safe_load(runtime_env) if isinstance(runtime_env, str) else None
            except yaml.YAMLError as exc:
                parsed = None
                problems.append((("spec", "runtimeEnvYAML"), f"not valid YAML: {exc}"))
            else:
                if not isinstance(parsed, dict):
                    problems.append((("spec", "runtimeEnvYAML"), "must be a YAML mapping in a string"))
        cluster_spec, base = spec.get("rayClusterSpec"), ("spec", "rayClusterSpec")
        if not isinstance(cluster_spec, dict):
            return problems + [(base, "missing; jigclu's RayJob brings its own cluster (rayClusterSpec)")]
    else:
        return problems + [(("kind",), f"{short(kind)}: jigclu checks RayCluster and RayJob manifests")]

    problems += _ray_cluster_spec_problems(cluster_spec, base)
    if not problems:
        problems += _ray_kuberay_problems(cluster_spec, metadata, base)
    return problems


def _ray_cluster_spec_problems(spec: dict[str, Any], base: KeyPath) -> list[Problem]:
    problems: list[Problem] = []
    version = ray_version()
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(
            (base + ("enableInTreeAutoscaling",), "must be true: elastic training needs Ray's autoscaler")
        )
    if "rayVersion" in spec and str(spec["rayVersion"]) != version:
        problems.append((base + ("rayVersion",), f"{short(spec['rayVersion'])} but this client runs ray {version}"))

    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        problems.append((base + ("headGroupSpec",), "missing or not a mapping"))
    else:
        problems += _group_problems(head, base + ("headGroupSpec",), version)

    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        problems.append((base + ("workerGroupSpecs",), "missing or empty; declare the GPU worker group"))
        return problems
    names: set[str] = set()
    for i, group in enumerate(groups):
        gbase = base + ("workerGroupSpecs", i)
        if not isinstance(group, dict):
            problems.append((gbase, "must be a mapping"))
            continue
        name = group.get("groupName")
        if not isinstance(name, str) or not name:
            problems.append((gbase + ("groupName",), "missing"))
        elif name in names:
            problems.append((gbase + ("groupName",), f"{name!r} is used by another worker group"))
        else:
            names.add(name)
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        for key, value in (("minReplicas", lo), ("maxReplicas", hi)):
            if key not in group:
                problems.append((gbase + (key,), "missing; elastic training's worker bounds come from it"))
            elif not is_int(value) or value < 0:
                problems.append((gbase + (key,), f"{short(value)} must be a whole number >= 0"))
        if is_int(lo) and is_int(hi):
            replicas = group.get("replicas")
            if lo > hi:
                problems.append((gbase + ("minReplicas",), f"minReplicas {lo} > maxReplicas {hi}"))
            elif replicas is not None and (not is_int(replicas) or not lo <= replicas <= hi):
                problems.append(
                    (gbase + ("replicas",), f"{short(replicas)} is outside minReplicas..maxReplicas ({lo}..{hi})")
                )
        problems += _group_problems(group, gbase, version)
    return problems


def _group_problems(group: dict[str, Any], base: KeyPath, version: str) -> list[Problem]:
    problems: list[Problem] = []
    params = group.get("rayStartParams")
    if not isinstance(params, dict):
        problems.append((base + ("rayStartParams",), "missing; use {} for none"))
    else:
        for key, value in params.items():
            if not isinstance(value, str):
                problems.append(
                    (base + ("rayStartParams", key),
                     f"{short(value)} must be a string (the CRD types rayStartParams as map[string]string)")
                )
    pod_spec = group["template"].get("spec") if isinstance(group.get("template"), dict) else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if not isinstance(containers, list) or not containers:
        problems.append((base + ("template", "spec", "containers"), "missing; the Ray container goes here"))
        return problems
    for c, container in enumerate(containers):
        cbase = base + ("template", "spec", "containers", c)
        if not isinstance(container, dict):
            problems.append((cbase, "must be a mapping"))
            continue
        image = container.get("image")
        if not isinstance(image, str) or not image.strip():
            problems.append((cbase + ("image",), "missing; set the Ray image"))
        else:
            match = _RAY_IMAGE.match(image)
            if match and match.group(1) != version:
                problems.append((cbase + ("image",), f"Ray {match.group(1)} image but this client runs ray {version}"))
        resources = container.get("resources") if isinstance(container.get("resources"), dict) else {}
        gpu_values = {}
        for section in ("limits", "requests"):
            block = resources.get(section)
            if isinstance(block, dict) and "nvidia.com/gpu" in block:
                value = block["nvidia.com/gpu"]
                gpu_values[section] = value
                if not (is_int(value) and value >= 0) and not (isinstance(value, str) and value.isdigit()):
                    problems.append(
                        (cbase + ("resources", section, "nvidia.com/gpu"),
                         f"{short(value)} is not a whole number of GPUs (Kubernetes cannot split a GPU)")
                    )
        if "requests" in gpu_values and "limits" not in gpu_values:
            problems.append(
                (cbase + ("resources", "limits", "nvidia.com/gpu"),
                 "missing; Kubernetes needs GPUs under limits (requests alone are rejected)")
            )
        if len(gpu_values) == 2 and str(gpu_values["limits"]) != str(gpu_values["requests"]):
            problems.append(
                (cbase + ("resources", "requests", "nvidia.com/gpu"),
                 f"{short(gpu_values['requests'])} differs from limits {short(gpu_values['limits'])}; "
                 "Kubernetes requires them equal for GPUs")
            )
    return problems


def _ray_kuberay_problems(spec: dict[str, Any], metadata: dict[str, Any], base: KeyPath) -> list[Problem]:
    """Translate the cluster spec exactly as KubeRay's in-tree autoscaler does."""
    # Imported here, not at the top: every `jigclu` command imports this package to register
    # `jigclu cluster`, and none of them should pay for importing Ray's autoscaler.
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    ray_cr = {  # check_kuberay calls this only once metadata.name is known to be set
        "metadata": {"name": metadata["name"], "namespace": metadata.get("namespace", "default")},
        "spec": copy.deepcopy(spec),
    }
    try:
        # Ends in validate_config; then read the node types as the v2 autoscaler does.
        derived = _derive_autoscaling_config_from_ray_cr(ray_cr)
        AutoscalingConfig(derived, skip_content_hash=True).get_node_type_configs()
    except Exception as exc:  # noqa: BLE001 - any rejection is reported, not raised
        return [(base, f"Ray's KubeRay autoscaling-config translation rejected it: {type(exc).__name__}: {exc}")]
    return []

