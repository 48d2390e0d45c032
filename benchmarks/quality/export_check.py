"""Does ``jigclu export`` of a pretraining checkpoint reproduce its probe in a plain torchvision ResNet?

    python -m benchmarks.quality.export_check CHECKPOINT OUT.json [key=value ...]

Runs the real ``jigclu export`` command on CHECKPOINT, loads the file into
``torchvision.models.ResNet`` (``jigclu.models.torchvision_resnet``: torchvision's class, only
``fc.*`` missing), and scores its pooled features with the benchmark's probe and kNN; the same
scores of the checkpoint's own backbone (``jigclu.models.ResNetBackbone``) are computed alongside.
Writes both and their difference to OUT.json (the quality benchmark wants it within 0.5 points).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.quality.budget_run import DEFAULT_CONFIG, backbone_of, load_splits, score
from jigclu.config import load_config
from jigclu.pretrained import load_backbone_weights
from jigclu.models import torchvision_resnet


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a pretraining checkpoint (budget_run.py --save)")
    parser.add_argument("out", type=Path, help="where the JSON result goes")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="on top of configs/fashion_mnist.yaml")
    args = parser.parse_args(argv)
    ckpt, out, overrides = args.checkpoint, args.out, args.overrides
    cfg = load_config(DEFAULT_CONFIG, overrides)
    train, test = load_splits(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp, "backbone.pt")
        jigclu = Path(sys.executable).with_name("jigclu")
        subprocess.run([str(jigclu), "export", ckpt, str(exported)], check=True, stdout=subprocess.DEVNULL)
        net = torchvision_resnet(cfg.model.arch, cfg.model.width)
        keys = net.load_state_dict(torch.load(exported, weights_only=True), strict=False)
    if sorted(keys.missing_keys) != ["fc.bias", "fc.weight"] or keys.unexpected_keys:
        raise SystemExit(f"export_check: the export does not fit torchvision's ResNet: {keys}")
    net.fc = torch.nn.Identity()  # pooled features, as the benchmark scores them
    exported_scores = score(cfg, net, train, test, monitors=False)
    original = score(cfg, backbone_of(cfg, load_backbone_weights(ckpt).state), train, test, monitors=False)
    result = {"torchvision_class": f"{type(net).__module__}.{type(net).__name__}", "export": exported_scores,
              "checkpoint": {k: original[k] for k in ("probe", "knn")},
              "probe_diff": exported_scores["probe"] - original["probe"]}
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main(sys.argv[1:]))
