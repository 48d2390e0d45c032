"""``jigclu cluster validate`` and ``jigclu cluster render``: parse the arguments, call the
package, print the result. :func:`add_cli` registers both on the ``jigclu`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jigclu.cluster.issues import ray_version
from jigclu.cluster.paths import default_cluster_files
from jigclu.cluster.templates import GPU_TYPES, render
from jigclu.cluster.validate import validate_files, validate_text
from jigclu.errors import ConfigError
from jigclu.storage import write_atomic


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
    print(f"ok: {len(files)} file(s) pass Ray {ray_version()}'s checks and jigclu's")
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
        write_atomic(Path(args.output).expanduser(), text)
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
