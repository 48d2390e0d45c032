"""Ray cluster-launcher configs (``ray up FILE``; see Ray's "Cluster YAML configuration options"
docs and ``clusters/README.md``).

A config goes through Ray's JSON schema (:mod:`jigclu.cluster.schema`) and jigclu's own checks:
the head node type exists, worker bounds are consistent, node resources and GPU counts are whole
numbers, GCP GPU nodes terminate on host maintenance, and the setup installs jigclu and the Ray
version this client runs. When neither finds anything, the launcher's own offline steps run,
``prepare_config`` (merges the provider defaults, fills per-type worker bounds) and
``validate_config``, exactly as ``ray up`` does before it talks to the cloud, and the node types
are read the way the autoscaler (v2) on the head reads them. The provider bootstrap that follows
in ``ray up`` (``bootstrap_config``: subnets, key pairs, IAM) needs boto3 / the Google API client
*and* live credentials, so it is not run here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from jigclu.cluster.issues import KeyPath, Problem, is_int, ray_version, short
from jigclu.cluster.schema import schema_problems

_JIGCLU_INSTALL = re.compile(r"\bpip3?\s+install\b.*\bjigclu\b", re.DOTALL)
_RAY_PIN = re.compile(r"""\bray(?:\[[^\]]*\])?\s*==\s*([0-9][\w.]*)""")
_GPU_INSTANCE = re.compile(r"^(?:g\d|p\d)", re.IGNORECASE)  # AWS GPU families: g4dn, g5, p4d, ...


def check_launcher(config: dict[str, Any]) -> list[Problem]:
    """Every problem in one cluster-launcher config; Ray's own steps run only on a clean one,
    so each mistake is reported once, in our words, with its key path."""
    problems = _launcher_own_problems(config) + schema_problems(config)
    if not problems:
        problems += _ray_launcher_problems(config)
    return problems


def _launcher_own_problems(config: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    provider = config.get("provider")
    provider_type = provider.get("type") if isinstance(provider, dict) else None

    global_max = config.get("max_workers")
    if "max_workers" not in config:
        problems.append((("max_workers",), "missing; set the cap on worker nodes explicitly"))
    elif not is_int(global_max) or global_max < 0:
        problems.append((("max_workers",), f"{short(global_max)} must be a whole number >= 0"))
        global_max = None

    node_types = config.get("available_node_types")
    if not isinstance(node_types, dict) or not node_types:
        problems.append(
            (("available_node_types",), "missing or empty; declare the head and worker node types")
        )
        node_types = {}

    head = config.get("head_node_type")
    if "head_node_type" not in config:
        problems.append((("head_node_type",), "missing; name the head's entry in available_node_types"))
    elif head not in node_types:
        names = ", ".join(map(str, node_types)) or "none"
        problems.append(
            (("head_node_type",), f"{short(head)} is not one of available_node_types ({names})")
        )

    min_sum = 0
    for name, node_type in node_types.items():
        base: KeyPath = ("available_node_types", name)
        if not isinstance(node_type, dict):
            problems.append((base, "must be a mapping"))
            continue
        lo = node_type.get("min_workers", 0)
        default_hi = 0 if name == head else (global_max if global_max is not None else 0)
        hi = node_type.get("max_workers", default_hi)
        for key, value in (("min_workers", lo), ("max_workers", hi)):
            if not is_int(value) or value < 0:
                problems.append((base + (key,), f"{short(value)} must be a whole number >= 0"))
        if is_int(lo) and is_int(hi) and lo > hi:
            problems.append((base + ("min_workers",), f"min_workers {lo} > max_workers {hi}"))
        if is_int(lo) and lo > 0:
            min_sum += lo
        problems += _resource_problems(base, node_type, provider_type)

    if global_max is not None and min_sum > global_max:
        problems.append(
            (("max_workers",), f"the node types' min_workers add up to {min_sum} > max_workers {global_max}")
        )
    problems += _setup_problems(config)
    if isinstance(provider, dict) and "gcp_credentials" in provider:
        problems.append(
            (("provider", "gcp_credentials"),
             "embeds GCP credentials; `ray up` should use your gcloud application-default credentials")
        )
    return problems


def _resource_problems(base: KeyPath, node_type: dict[str, Any], provider_type: Any) -> list[Problem]:
    problems: list[Problem] = []
    resources = node_type.get("resources")
    node_config = node_type.get("node_config") if isinstance(node_type.get("node_config"), dict) else {}
    if not isinstance(resources, dict):
        return problems  # the schema reports a missing / non-mapping `resources`
    for key, value in resources.items():
        if not is_int(value) or value < 0:
            problems.append(
                (base + ("resources", key),
                 f"{short(value)} is not a whole number >= 0; Ray counts node resources in integer units")
            )
    if "CPU" not in resources:
        problems.append(
            (base + ("resources",),
             "declare CPU (and GPU) explicitly: the autoscaler plans with them before any node exists")
        )

    gpus = resources.get("GPU", 0)
    if provider_type == "aws":
        instance = node_config.get("InstanceType")
        if isinstance(instance, str) and _GPU_INSTANCE.match(instance) and "GPU" not in resources:
            problems.append(
                (base + ("resources", "GPU"), f"missing for GPU instance type {instance}; declare its GPU count")
            )
    if provider_type == "gcp":
        accelerators = node_config.get("guestAccelerators") or []
        if isinstance(accelerators, dict):
            accelerators = [accelerators]
        attached = 0
        for acc in accelerators if isinstance(accelerators, list) else []:
            count = acc.get("acceleratorCount", 1) if isinstance(acc, dict) else 0
            attached += count if is_int(count) else 0
        if attached and is_int(gpus) and gpus != attached:
            problems.append(
                (base + ("resources", "GPU"),
                 f"{gpus} but node_config.guestAccelerators attaches {attached} GPU(s)")
            )
        if attached:
            scheduling = node_config.get("scheduling") or {}
            if isinstance(scheduling, list):  # Ray's older examples use a list of one-key maps
                merged: dict[str, Any] = {}
                for item in scheduling:
                    if isinstance(item, dict):
                        merged.update(item)
                scheduling = merged
            if not isinstance(scheduling, dict) or scheduling.get("onHostMaintenance") != "TERMINATE":
                problems.append(
                    (base + ("node_config", "scheduling", "onHostMaintenance"),
                     "must be TERMINATE: GCP refuses to create VMs with GPUs otherwise")
                )
    return problems


def _command_lists(config: dict[str, Any]) -> Iterator[tuple[KeyPath, list[Any]]]:
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        value = config.get(key)
        if isinstance(value, list):
            yield (key,), value
    node_types = config.get("available_node_types")
    if isinstance(node_types, dict):
        for name, node_type in node_types.items():
            if not isinstance(node_type, dict):
                continue
            for key in ("initialization_commands", "worker_setup_commands"):
                value = node_type.get(key)
                if isinstance(value, list):
                    yield ("available_node_types", name, key), value


def _setup_problems(config: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    commands = [
        (path + (i,), cmd)
        for path, cmds in _command_lists(config)
        for i, cmd in enumerate(cmds)
        if isinstance(cmd, str)
    ]
    installs = [(path, cmd) for path, cmd in commands if _JIGCLU_INSTALL.search(cmd)]
    if not installs:
        problems.append(
            (("setup_commands",),
             "no command installs jigclu; add `pip install -e ~/jigclu` (with file_mounts "
             '{"~/jigclu": "."}) or `pip install "jigclu @ git+https://github.com/YOUR-ORG/jigclu"`')
        )
    mounts = config.get("file_mounts") if isinstance(config.get("file_mounts"), dict) else {}
    mounted = {str(k).rstrip("/") for k in mounts}
    for path, cmd in installs:
        for token in cmd.split():
            token = token.strip("'\"")
            if "jigclu" in token and token.startswith(("~", "/", ".")):
                target = re.sub(r"\[[^\]]*\]$", "", token).rstrip("/")  # drop extras: ~/jigclu[dev]
                if not any(target == m or target.startswith(m + "/") for m in mounted):
                    problems.append(
                        (path, f"installs {token} but file_mounts copies nothing there")
                    )

    docker = config.get("docker") if isinstance(config.get("docker"), dict) else {}
    uses_image = bool(docker.get("image") or docker.get("head_image") or docker.get("worker_image"))
    pins = [(path, m.group(1)) for path, cmd in commands for m in _RAY_PIN.finditer(cmd)]
    version = ray_version()
    if not pins and not uses_image:
        problems.append(
            (("setup_commands",),
             f'does not pin Ray; install "ray[default,train,tune]=={version}" so the cluster '
             "runs the Ray this client runs")
        )
    for path, pinned in pins:
        if pinned != version:
            problems.append(
                (path, f"pins ray {pinned} but this client runs ray {version}; `ray up` and "
                       "`ray job submit` need the same version on both sides")
            )
    return problems


def _ray_launcher_problems(config: dict[str, Any]) -> list[Problem]:
    """Run the launcher's own offline steps (what `ray up` does before calling the cloud)."""
    # Imported here, not at the top: every `jigclu` command imports this package to register
    # `jigclu cluster`, and none of them should pay for importing Ray's autoscaler.
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    try:
        # What `ray up` does before it calls the cloud ...
        validate_config(prepare_config(copy.deepcopy(config)))
        # ... and how the autoscaler (v2) on the head reads the node types.
        AutoscalingConfig(copy.deepcopy(config), skip_content_hash=True).get_node_type_configs()
    except jsonschema.ValidationError as exc:
        return [(tuple(exc.absolute_path), f"Ray's validate_config: {exc.message}")]
    except Exception as exc:  # noqa: BLE001 - any rejection is reported, not raised
        return [((), f"Ray's own config checks rejected it: {type(exc).__name__}: {exc}")]
    return []

