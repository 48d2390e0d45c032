"""Render a cluster-launcher YAML from the shipped ``clusters/{aws,gcp}-gpu.yaml`` templates for
another GPU type, size or region (``jigclu cluster render``; see ``clusters/README.md``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from jigclu.cluster.issues import is_int
from jigclu.cluster.paths import clusters_dir
from jigclu.errors import ConfigError


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
    result passes :func:`~jigclu.cluster.validate.validate_text`.
    """
    provider = provider.lower()
    if provider not in GPU_TYPES:
        raise ConfigError(f"provider {provider!r}: choose one of {', '.join(GPU_TYPES)}")
    gpu_type = (gpu_type or DEFAULT_GPU[provider]).lower()
    if gpu_type not in GPU_TYPES[provider]:
        raise ConfigError(
            f"gpu type {gpu_type!r} on {provider}: choose one of {', '.join(GPU_TYPES[provider])}"
        )
    if not is_int(max_workers) or max_workers < 1:
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

