"""Offline checks and rendering for the cluster configs under ``clusters/`` (see
``clusters/README.md``).

Two kinds of file are understood:

* **Ray cluster-launcher configs** (``ray up FILE``): Ray's own JSON schema, jigclu's checks,
  then the launcher's own offline steps (:mod:`jigclu.cluster.launcher`,
  :mod:`jigclu.cluster.schema`).
* **KubeRay manifests** (``apiVersion: ray.io/...``, kinds RayCluster and RayJob): jigclu's
  checks, then KubeRay's in-tree autoscaler translation (:mod:`jigclu.cluster.kuberay`).

Both kinds are finally read the way the autoscaler on the head reads them (autoscaler v2's
``AutoscalingConfig(...).get_node_type_configs()``), and no file may carry a credential or a
real-looking AWS account id (:mod:`jigclu.secrets`). Ray's own steps run once our checks
find nothing, so each mistake is reported once, in our words, with its key path; they remain
the backstop for anything we do not check.

Every problem is a :class:`ValidationIssue` naming the file, the key path
(``available_node_types.gpu_spot_1x.resources.GPU``, ``spec.workerGroupSpecs[0].minReplicas``)
and what is wrong (:mod:`jigclu.cluster.validate` reads the files and sorts the documents).
:mod:`jigclu.cluster.templates` renders a launcher config for another GPU type, region or size,
and :mod:`jigclu.cluster.cli` puts both behind ``jigclu cluster validate|render``.
"""

from jigclu.cluster.cli import add_cli
from jigclu.cluster.issues import ValidationIssue, format_key_path
from jigclu.cluster.paths import clusters_dir, default_cluster_files
from jigclu.cluster.templates import DEFAULT_GPU, GPU_TYPES, GpuShape, GpuType, render
from jigclu.cluster.validate import validate_document, validate_files, validate_text

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
