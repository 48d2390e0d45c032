"""Offline checks and rendering for the cluster configs under ``clusters/``.

Two kinds of file are understood:

* **Ray cluster-launcher configs** (``ray up FILE``). Each is checked against Ray's own JSON
  schema (``ray/autoscaler/ray-schema.json``), then run through the launcher's own offline
  steps, ``prepare_config`` (merges the provider defaults, fills per-type worker bounds) and
  ``validate_config``, exactly as ``ray up`` does before it talks to the cloud. The provider
  bootstrap that follows in ``ray up`` (``bootstrap_config``: subnets, key pairs, IAM) needs
  boto3 / the Google API client *and* live credentials, so it is not run here.
* **KubeRay manifests** (``apiVersion: ray.io/...``, kinds RayCluster and RayJob). Their cluster
  spec goes through ``_derive_autoscaling_config_from_ray_cr``, the function KubeRay's in-tree
  autoscaler uses to turn a RayCluster into an autoscaling config (it ends in
  ``validate_config``).

Both kinds are finally read the way the autoscaler on the head reads them (autoscaler v2's
``AutoscalingConfig(...).get_node_type_configs()``).

On top of Ray's checks come ours, the ones jigclu relies on: the head node type exists, worker
bounds are consistent, node resources and GPU counts are whole numbers, the setup installs
jigclu and the Ray version this client runs, KubeRay worker groups have the replica bounds that
elastic training assumes, and no file carries a credential or a real-looking AWS account id.

Ray's own steps run once the schema and our checks find nothing, so each mistake is reported
once, in our words, with its key path; they remain the backstop for anything we do not check.

Every problem is a :class:`ValidationIssue` naming the file, the key path
(``available_node_types.gpu_spot_1x.resources.GPU``, ``spec.workerGroupSpecs[0].minReplicas``)
and what is wrong.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib.metadata
import importlib.util
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from jigclu.errors import ConfigError

__all__ = [
    "ValidationIssue",
    "validate_files",
    "validate_text",
    "validate_document",
    "default_cluster_files",
    "clusters_dir",
    "render",
    "add_cli",
    "GPU_TYPES",
]

KeyPath = tuple[str | int, ...]
Problem = tuple[KeyPath, str]


@dataclass(frozen=True)
class ValidationIssue:
    """One problem in one file: where (file + key path) and what."""

    file: str
    key_path: str
    message: str

    def __str__(self) -> str:
        if self.key_path:
            return f"{self.file}: {self.key_path}: {self.message}"
        return f"{self.file}: {self.message}"


def format_key_path(path: KeyPath) -> str:
    """``("a", "b", 0, "c")`` -> ``"a.b[0].c"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _ray_version() -> str:
    return importlib.metadata.version("ray")


# --------------------------------------------------------------------------------------------
# Files and documents
# --------------------------------------------------------------------------------------------


def validate_files(paths: Sequence[str | Path]) -> list[ValidationIssue]:
    """Validate cluster-launcher YAMLs and KubeRay manifests; return every problem found.

    A missing or unreadable file, or one that is not valid YAML, is one issue (not an
    exception), so a CLI can report all files in one pass.
    """
    issues: list[ValidationIssue] = []
    for path in paths:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            issues.append(ValidationIssue(name, "", "no such file"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(ValidationIssue(name, "", f"cannot read: {exc}"))
            continue
        issues.extend(validate_text(text, name))
    return issues


def validate_text(text: str, file: str = "<text>") -> list[ValidationIssue]:
    """Validate the YAML ``text`` of one file (one or more documents)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [ValidationIssue(file, where, f"not valid YAML: {problem}")]
    docs = [d for d in docs if d is not None]
    if not docs:
        return [ValidationIssue(file, "", "file is empty")]

    issues: list[ValidationIssue] = []
    structured_hits: set[str] = set()
    for index, doc in enumerate(docs):
        prefix = f"doc{index + 1}." if len(docs) > 1 else ""
        problems, hits = _validate_document(doc)
        structured_hits |= hits
        issues.extend(
            ValidationIssue(file, prefix + format_key_path(path), msg) for path, msg in problems
        )
    # Secrets in comments never reach the parsed documents: scan the raw lines for whatever
    # the structured scan did not already report.
    for line_no, line in enumerate(text.splitlines(), start=1):
        for match, what in _secret_matches(line) + _account_id_matches(line):
            if match not in structured_hits:
                structured_hits.add(match)
                issues.append(ValidationIssue(file, f"line {line_no}", f"{what} (in a comment)"))
    return issues


def validate_document(doc: Any) -> list[tuple[str, str]]:
    """Validate one parsed document; return ``(key_path, message)`` pairs."""
    problems, _ = _validate_document(doc)
    return [(format_key_path(path), msg) for path, msg in problems]


def _validate_document(doc: Any) -> tuple[list[Problem], set[str]]:
    if not isinstance(doc, dict):
        return [((), f"top level must be a mapping, got {type(doc).__name__}")], set()
    secret_problems, hits = _scan_secrets(doc)
    api_version = doc.get("apiVersion")
    if isinstance(api_version, str) and api_version.startswith("ray.io/"):
        problems = _check_kuberay(doc)
    elif "apiVersion" in doc and "kind" in doc:
        problems = []  # another Kubernetes object (ServiceAccount, ...): secrets only
    else:
        problems = _check_launcher(doc)
    return _dedupe(problems + secret_problems), hits


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """Keep the first problem reported for each key path (our wording before the schema's)."""
    seen: set[KeyPath] = set()
    out: list[Problem] = []
    for path, msg in problems:
        if path not in seen:
            seen.add(path)
            out.append((path, msg))
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Ray cluster-launcher configs
# --------------------------------------------------------------------------------------------


def _ray_schema_path() -> Path:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("Ray is not installed; cannot validate cluster configs")
    return Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"


_SCHEMA_CACHE: dict[str, Any] = {}


def _ray_schema() -> dict[str, Any]:
    if "schema" not in _SCHEMA_CACHE:
        _SCHEMA_CACHE["schema"] = json.loads(_ray_schema_path().read_text(encoding="utf-8"))
    return _SCHEMA_CACHE["schema"]


def _schema_problems(config: dict[str, Any]) -> list[Problem]:
    """Every violation of Ray's ``ray-schema.json``, with the key path it applies to."""
    import jsonschema  # a dependency of ray[default]; imported late to keep the CLI fast

    schema = _ray_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems: list[Problem] = []
    for err in sorted(validator.iter_errors(config), key=lambda e: str(list(e.absolute_path))):
        path: KeyPath = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = list((err.schema.get("properties") or {}).keys())
            patterns = list((err.schema.get("patternProperties") or {}).keys())
            for key in err.instance:
                if key in allowed or any(re.search(p, str(key)) for p in patterns):
                    continue
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                msg = "unknown key (not in Ray's cluster-config schema)"
                if hint:
                    msg += f"; did you mean {hint[0]!r}?"
                problems.append((path + (key,), msg))
        elif err.validator == "required" and isinstance(err.instance, dict):
            for key in err.validator_value:
                if key not in err.instance:
                    problems.append((path + (key,), "missing (required by Ray's cluster-config schema)"))
        else:
            message = err.message
            if len(message) > 160:
                message = message[:157] + "..."
            problems.append((path, f"{message} (Ray's cluster-config schema)"))
    return problems


_JIGCLU_INSTALL = re.compile(r"\bpip3?\s+install\b.*\bjigclu\b", re.DOTALL)
_RAY_PIN = re.compile(r"""\bray(?:\[[^\]]*\])?\s*==\s*([0-9][\w.]*)""")
_GPU_INSTANCE = re.compile(r"^(?:g\d|p\d)", re.IGNORECASE)  # AWS GPU families: g4dn, g5, p4d, ...


def _check_launcher(config: dict[str, Any]) -> list[Problem]:
    problems = _launcher_own_problems(config) + _schema_problems(config)
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
    elif not _is_int(global_max) or global_max < 0:
        problems.append((("max_workers",), f"{_short(global_max)} must be a whole number >= 0"))
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
            (("head_node_type",), f"{_short(head)} is not one of available_node_types ({names})")
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
            if not _is_int(value) or value < 0:
                problems.append((base + (key,), f"{_short(value)} must be a whole number >= 0"))
        if _is_int(lo) and _is_int(hi) and lo > hi:
            problems.append((base + ("min_workers",), f"min_workers {lo} > max_workers {hi}"))
        if _is_int(lo) and lo > 0:
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
        if not _is_int(value) or value < 0:
            problems.append(
                (base + ("resources", key),
                 f"{_short(value)} is not a whole number >= 0; Ray counts node resources in integer units")
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
            attached += count if _is_int(count) else 0
        if attached and _is_int(gpus) and gpus != attached:
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
    version = _ray_version()
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
    try:
        import jsonschema
        from ray.autoscaler._private.util import prepare_config, validate_config
        from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
    except ImportError as exc:  # pragma: no cover - ray[default] is a dependency
        return [((), f"cannot run Ray's own config validation ({exc}); install ray[default]")]
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


# --------------------------------------------------------------------------------------------
# KubeRay manifests
# --------------------------------------------------------------------------------------------

_RAY_IMAGE = re.compile(r"^(?:docker\.io/)?rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)")


def _check_kuberay(doc: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append((("apiVersion",), f"{_short(doc.get('apiVersion'))}: use ray.io/v1 (KubeRay 1.x)"))
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
        return problems + [(("kind",), f"{_short(kind)}: jigclu checks RayCluster and RayJob manifests")]

    problems += _ray_cluster_spec_problems(cluster_spec, base)
    if not problems:
        problems += _ray_kuberay_problems(cluster_spec, metadata, base)
    return problems


def _ray_cluster_spec_problems(spec: dict[str, Any], base: KeyPath) -> list[Problem]:
    problems: list[Problem] = []
    version = _ray_version()
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(
            (base + ("enableInTreeAutoscaling",), "must be true: elastic training needs Ray's autoscaler")
        )
    if "rayVersion" in spec and str(spec["rayVersion"]) != version:
        problems.append((base + ("rayVersion",), f"{_short(spec['rayVersion'])} but this client runs ray {version}"))

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
            elif not _is_int(value) or value < 0:
                problems.append((gbase + (key,), f"{_short(value)} must be a whole number >= 0"))
        if _is_int(lo) and _is_int(hi):
            replicas = group.get("replicas")
            if lo > hi:
                problems.append((gbase + ("minReplicas",), f"minReplicas {lo} > maxReplicas {hi}"))
            elif replicas is not None and (not _is_int(replicas) or not lo <= replicas <= hi):
                problems.append(
                    (gbase + ("replicas",), f"{_short(replicas)} is outside minReplicas..maxReplicas ({lo}..{hi})")
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
                     f"{_short(value)} must be a string (the CRD types rayStartParams as map[string]string)")
                )
    pod_spec = (group.get("template") or {}).get("spec") if isinstance(group.get("template"), dict) else None
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
                if not (_is_int(value) and value >= 0) and not (isinstance(value, str) and value.isdigit()):
                    problems.append(
                        (cbase + ("resources", section, "nvidia.com/gpu"),
                         f"{_short(value)} is not a whole number of GPUs (Kubernetes cannot split a GPU)")
                    )
        if "requests" in gpu_values and "limits" not in gpu_values:
            problems.append(
                (cbase + ("resources", "limits", "nvidia.com/gpu"),
                 "missing; Kubernetes needs GPUs under limits (requests alone are rejected)")
            )
        if len(gpu_values) == 2 and str(gpu_values["limits"]) != str(gpu_values["requests"]):
            problems.append(
                (cbase + ("resources", "requests", "nvidia.com/gpu"),
                 f"{_short(gpu_values['requests'])} differs from limits {_short(gpu_values['limits'])}; "
                 "Kubernetes requires them equal for GPUs")
            )
    return problems


def _ray_kuberay_problems(spec: dict[str, Any], metadata: dict[str, Any], base: KeyPath) -> list[Problem]:
    """Translate the cluster spec exactly as KubeRay's in-tree autoscaler does."""
    try:
        from ray.autoscaler._private.kuberay.autoscaling_config import (
            _derive_autoscaling_config_from_ray_cr,
        )
        from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
    except ImportError as exc:  # pragma: no cover - ray[default] is a dependency
        return [((), f"cannot run Ray's KubeRay config translation ({exc}); install ray[default]")]
    ray_cr = {
        "metadata": {"name": metadata.get("name", "jigclu"), "namespace": metadata.get("namespace", "default")},
        "spec": copy.deepcopy(spec),
    }
    try:
        # Ends in validate_config; then read the node types as the v2 autoscaler does.
        derived = _derive_autoscaling_config_from_ray_cr(ray_cr)
        AutoscalingConfig(derived, skip_content_hash=True).get_node_type_configs()
    except Exception as exc:  # noqa: BLE001 - any rejection is reported, not raised
        return [(base, f"Ray's KubeRay autoscaling-config translation rejected it: {type(exc).__name__}: {exc}")]
    return []


# --------------------------------------------------------------------------------------------
# Secrets and account ids
# --------------------------------------------------------------------------------------------

_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "looks like an AWS access key id"),
    (re.compile(r"(?i)\baws_secret_access_key\b"), "names an AWS secret access key"),
    (re.compile(r"(?i)\baws_session_token\b"), "names an AWS session token"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), "looks like a GitHub token"),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), "looks like a GitHub token"),
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"), "contains a private key"),
    (re.compile(r"""["']private_key(?:_id)?["']\s*:"""), "contains a GCP service-account key (JSON)"),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), "looks like a Slack token"),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"), "looks like a Google API key"),
]
_SECRET_KEYS = {
    "aws_access_key_id", "aws_secret_access_key", "secret_access_key", "secretaccesskey",
    "aws_session_token", "session_token", "private_key", "private_key_id", "client_secret",
    "password", "passwd", "api_key", "apikey", "access_token", "auth_token", "token",
}
_SECRET_ENV_NAME = re.compile(r"(?i)(secret|token|password|passwd|api_?key|private_key|access_key)")
_ACCOUNT_PATTERNS = [
    re.compile(r"arn:aws[\w-]*:[\w-]*:[\w-]*:(\d{12}):"),
    re.compile(r"\b(\d{12})\.dkr\.ecr\."),
]
# Documentation placeholders, not accounts: AWS's own example id and repeated digits.
_PLACEHOLDER_ACCOUNTS = {"123456789012", "012345678901", "210987654321"}


def _is_placeholder(value: str) -> bool:
    text = value.strip()
    return (
        not text
        or text.startswith(("$", "<", "{{"))
        or bool(re.search(r"YOUR|REPLACE|CHANGE[-_]?ME|EXAMPLE|PLACEHOLDER|xxxx", text, re.IGNORECASE))
    )


def _is_placeholder_account(digits: str) -> bool:
    return digits in _PLACEHOLDER_ACCOUNTS or len(set(digits)) == 1


def _secret_matches(text: str) -> list[tuple[str, str]]:
    return [(m.group(0), what) for pattern, what in _SECRET_PATTERNS for m in pattern.finditer(text)]


def _account_id_matches(text: str) -> list[tuple[str, str]]:
    out = []
    for pattern in _ACCOUNT_PATTERNS:
        for m in pattern.finditer(text):
            if not _is_placeholder_account(m.group(1)):
                out.append((m.group(1), "contains what looks like a real AWS account id; use a placeholder"))
    return out


def _walk(obj: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any, Any]]:
    """Yield ``(path, key, value)`` for every entry; key is None for list items / the root."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield path + (key,), key, value
            yield from _walk(value, path + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield path + (i,), None, value
            yield from _walk(value, path + (i,))


def _scan_secrets(doc: Any) -> tuple[list[Problem], set[str]]:
    problems: list[Problem] = []
    hits: set[str] = set()
    for path, key, value in _walk(doc):
        texts = [str(key)] if key is not None else []
        if isinstance(value, str):
            texts.append(value)
        for text in texts:
            for match, what in _secret_matches(text) + _account_id_matches(text):
                hits.add(match)
                problems.append((path, what))
        if isinstance(key, str) and key.lower().replace("-", "_") in _SECRET_KEYS:
            if isinstance(value, (str, int)) and not isinstance(value, bool) and not _is_placeholder(str(value)):
                problems.append((path, "holds a credential; keep credentials out of cluster files"))
        if isinstance(key, str) and "account" in key.lower() and re.fullmatch(r"\d{12}", str(value)):
            if not _is_placeholder_account(str(value)):
                hits.add(str(value))
                problems.append((path, "looks like a real AWS account id; use a placeholder"))
        # Kubernetes env entries: {name: AWS_SECRET_ACCESS_KEY, value: "..."}
        if isinstance(value, dict) and isinstance(value.get("name"), str) and "value" in value:
            literal = value.get("value")
            if _SECRET_ENV_NAME.search(value["name"]) and isinstance(literal, str) and not _is_placeholder(literal):
                problems.append(
                    (path + ("value",), f"sets {value['name']} inline; use valueFrom.secretKeyRef or a cloud role")
                )
    return problems, hits


# --------------------------------------------------------------------------------------------
# Shipped files
# --------------------------------------------------------------------------------------------


def clusters_dir(start: str | Path | None = None) -> Path | None:
    """The ``clusters/`` directory: next to the jigclu package (a source checkout), else in
    ``start`` (default: the current directory). None when neither exists."""
    candidates = [Path(__file__).resolve().parent.parent / "clusters"]
    candidates.append(Path(start) / "clusters" if start is not None else Path.cwd() / "clusters")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def default_cluster_files(start: str | Path | None = None) -> list[Path]:
    """Every ``*.yaml`` / ``*.yml`` under the shipped ``clusters/`` directory, sorted."""
    root = clusters_dir(start)
    if root is None:
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


class GpuShape(NamedTuple):
    machine: str  # EC2 instance type / GCE machine type
    cpus: int
    gpus: int


class GpuType(NamedTuple):
    accelerator: str | None  # GCE acceleratorType; None on AWS (the instance type implies it)
    single: GpuShape
    quad: GpuShape


GPU_TYPES: dict[str, dict[str, GpuType]] = {
    "aws": {
        "a10g": GpuType(None, GpuShape("g5.xlarge", 4, 1), GpuShape("g5.12xlarge", 48, 4)),
        "t4": GpuType(None, GpuShape("g4dn.xlarge", 4, 1), GpuShape("g4dn.12xlarge", 48, 4)),
        "l4": GpuType(None, GpuShape("g6.xlarge", 4, 1), GpuShape("g6.12xlarge", 48, 4)),
    },
    "gcp": {
        "t4": GpuType("nvidia-tesla-t4", GpuShape("n1-standard-8", 8, 1), GpuShape("n1-standard-32", 32, 4)),
        "v100": GpuType("nvidia-tesla-v100", GpuShape("n1-standard-8", 8, 1), GpuShape("n1-standard-32", 32, 4)),
    },
}
DEFAULT_GPU = {"aws": "a10g", "gcp": "t4"}
_SINGLE_TYPES = ("gpu_spot_1x", "gpu_ondemand_1x")
_QUAD_TYPES = ("gpu_spot_4x",)
_GCP_PROJECT_PLACEHOLDER = "YOUR-GCP-PROJECT-ID"


class _NoAliasDumper(yaml.SafeDumper):
    """Write shared objects out in full: a rendered config has no anchors to follow."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _replace_strings(obj: Any, old: str, new: str) -> Any:
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, list):
        return [_replace_strings(v, old, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _replace_strings(v, old, new) for k, v in obj.items()}
    return obj


def render(
    provider: str,
    gpu_type: str | None = None,
    max_workers: int = 8,
    region: str | None = None,
    *,
    zone: str | None = None,
    project_id: str | None = None,
    image_id: str | None = None,
    cluster_name: str | None = None,
    templates: str | Path | None = None,
) -> str:
    """Render a cluster-launcher YAML from the shipped ``clusters/{provider}-gpu.yaml``.

    ``gpu_type`` picks the GPU (see :data:`GPU_TYPES`) for the single-GPU spot and on-demand
    types and the four-GPU spot type. ``max_workers`` caps the GPU worker nodes: it becomes the
    global ``max_workers`` and the bound of each single-GPU type (the four-GPU type gets a
    quarter of it, at least one). ``region``/``zone`` move the cluster (on AWS without ``zone``
    any zone of the region may be used; on GCP ``zone`` defaults to ``{region}-a``).
    ``project_id`` (GCP) and ``image_id`` (AWS AMI) fill the template's placeholders. The
    result passes :func:`validate_text`.
    """
    provider = provider.lower()
    if provider not in GPU_TYPES:
        raise ConfigError(f"provider {provider!r}: choose one of {', '.join(GPU_TYPES)}")
    gpu_type = (gpu_type or DEFAULT_GPU[provider]).lower()
    if gpu_type not in GPU_TYPES[provider]:
        raise ConfigError(
            f"gpu type {gpu_type!r} on {provider}: choose one of {', '.join(GPU_TYPES[provider])}"
        )
    if not _is_int(max_workers) or max_workers < 1:
        raise ConfigError(f"max_workers {max_workers!r}: must be a whole number >= 1")
    if image_id is not None and not re.fullmatch(r"ami-[0-9a-f]{8,17}", image_id):
        raise ConfigError(f"image id {image_id!r}: expected an AMI id like ami-0123456789abcdef0")
    if image_id is not None and provider != "aws":
        raise ConfigError("--image-id is for aws; GCP images are set per node type in the template")
    if project_id is not None and not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", project_id):
        raise ConfigError(f"project id {project_id!r}: not a GCP project id (6-30 lowercase letters, digits, -)")
    if project_id is not None and provider != "gcp":
        raise ConfigError("--project-id is for gcp")

    root = Path(templates) if templates is not None else clusters_dir()
    template_path = root / f"{provider}-gpu.yaml" if root is not None else None
    if template_path is None or not template_path.is_file():
        raise ConfigError(
            f"template {provider}-gpu.yaml not found; run from the jigclu repository root "
            "(the one with clusters/)"
        )
    config = yaml.safe_load(template_path.read_text(encoding="utf-8"))
    node_types = config.get("available_node_types", {})
    missing = [n for n in _SINGLE_TYPES + _QUAD_TYPES if n not in node_types]
    if missing:
        raise ConfigError(f"{template_path}: node types {', '.join(missing)} missing; cannot render")

    spec = GPU_TYPES[provider][gpu_type]
    config["max_workers"] = max_workers
    for names, shape, cap in (
        (_SINGLE_TYPES, spec.single, max_workers),
        (_QUAD_TYPES, spec.quad, max(1, max_workers // 4)),
    ):
        for name in names:
            node_type = node_types[name]
            node_type["max_workers"] = cap
            node_type["resources"] = {"CPU": shape.cpus, "GPU": shape.gpus}
            node_config = node_type["node_config"]
            if provider == "aws":
                node_config["InstanceType"] = shape.machine
            else:
                node_config["machineType"] = shape.machine
                node_config["guestAccelerators"] = [
                    {"acceleratorType": spec.accelerator, "acceleratorCount": shape.gpus}
                ]

    provider_cfg = config["provider"]
    if region is not None:
        provider_cfg["region"] = region
        if provider == "aws" and zone is None:
            provider_cfg.pop("availability_zone", None)
        if provider == "gcp" and zone is None:
            zone = f"{region}-a"
    if zone is not None:
        provider_cfg["availability_zone"] = zone
    if image_id is not None:
        for node_type in node_types.values():
            node_type["node_config"]["ImageId"] = image_id
    if project_id is not None:
        config = _replace_strings(config, _GCP_PROJECT_PLACEHOLDER, project_id)
    if cluster_name is not None:
        config["cluster_name"] = cluster_name

    flags = [provider, f"--gpu {gpu_type}", f"--max-workers {max_workers}"]
    for flag, value in (("--region", region), ("--zone", zone), ("--project-id", project_id),
                        ("--image-id", image_id), ("--cluster-name", cluster_name)):
        if value is not None:
            flags.append(f"{flag} {value}")
    header = (
        f"# Rendered by `jigclu cluster render {' '.join(flags)}`\n"
        f"# from clusters/{provider}-gpu.yaml, whose comments explain every field.\n"
        "# Launch from the jigclu repository root (file_mounts copies \".\" to the nodes).\n"
    )
    body = yaml.dump(config, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=100)
    return header + body


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.files] if args.files else default_cluster_files()
    if not files:
        print(
            "jigclu cluster validate: no files given and no clusters/ directory found "
            "(run it from the repository root or name the files)",
            file=sys.stderr,
        )
        return 1
    issues = validate_files(files)
    for issue in issues:
        print(issue)
    if issues:
        bad = len({i.file for i in issues})
        print(f"{len(issues)} problem(s) in {bad} of {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(files)} file(s) pass Ray {_ray_version()}'s checks and jigclu's")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    try:
        text = render(
            args.provider,
            args.gpu_type,
            args.max_workers,
            args.region,
            zone=args.zone,
            project_id=args.project_id,
            image_id=args.image_id,
            cluster_name=args.cluster_name,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    name = args.output or f"<rendered {args.provider}>"
    issues = validate_text(text, name)
    if issues:  # a template edited into an invalid state; never write a broken config
        for issue in issues:
            print(issue, file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}; launch it with: ray up {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cluster validate`` and ``cluster render`` on the CLI's subparsers.

    Each leaf parser sets ``func`` (``args -> exit code``); ``jigclu cluster`` alone prints
    its help and returns 2.
    """
    parser = subparsers.add_parser(
        "cluster",
        help="check and render Ray cluster configs (AWS, GCP, KubeRay)",
        description="Check Ray cluster-launcher YAMLs and KubeRay manifests offline, or render "
        "a cluster-launcher YAML for another GPU type, region or size.",
    )
    sub = parser.add_subparsers(dest="cluster_command", metavar="{validate,render}")

    validate = sub.add_parser(
        "validate",
        help="check cluster YAMLs offline (Ray's schema and launcher checks + jigclu's)",
        description="Check cluster-launcher YAMLs and KubeRay manifests without a cloud account. "
        "Prints one line per problem (FILE: key.path: message); exit code 1 if any.",
    )
    validate.add_argument(
        "files", nargs="*", metavar="FILE",
        help="files to check (default: every YAML under clusters/)",
    )
    validate.set_defaults(func=_cmd_validate)

    rend = sub.add_parser(
        "render",
        help="write a cluster-launcher YAML for a GPU type / region / size",
        description="Render clusters/{aws,gcp}-gpu.yaml with another GPU type, size or region, "
        "filling the AMI (aws) or project id (gcp) placeholders. The output is validated.",
    )
    rend.add_argument("provider", choices=sorted(GPU_TYPES), help="cloud provider")
    rend.add_argument(
        "--gpu", dest="gpu_type", default=None,
        help="GPU type: aws " + "/".join(GPU_TYPES["aws"]) + " (default a10g); gcp "
        + "/".join(GPU_TYPES["gcp"]) + " (default t4)",
    )
    rend.add_argument("--max-workers", type=int, default=8, help="most GPU worker nodes (default 8)")
    rend.add_argument("--region", default=None, help="region (default: the template's)")
    rend.add_argument("--zone", default=None, help="availability zone (gcp default: REGION-a)")
    rend.add_argument("--project-id", default=None, help="gcp: your project id")
    rend.add_argument("--image-id", default=None, help="aws: the AMI id of every node")
    rend.add_argument("--cluster-name", default=None, help="cluster name (default jigclu-gpu)")
    rend.add_argument("-o", "--output", default=None, help="write here instead of stdout")
    rend.set_defaults(func=_cmd_render)

    def _help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_help)
    return parser
