"""Does ``jigclu export`` of a pretraining checkpoint reproduce its probe in a plain torchvision ResNet?

    python benchmarks/export_check.py CHECKPOINT OUT.json [key=value ...]

Runs the real ``jigclu export`` command on CHECKPOINT, loads the file into
``torchvision.models.ResNet`` (``jigclu.models.torchvision_resnet``: torchvision's class, only
``fc.*`` missing), and scores its pooled features with the benchmark's probe and kNN; the same
scores of the checkpoint's own backbone (``jigclu.models.ResNetBackbone``) are computed alongside.
Writes both and their difference to OUT.json (the quality benchmark wants it within 0.5 points).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import common  # noqa: F401  (sibling module; puts the repository on sys.path)
from budget_run import DEFAULT_CONFIG, score
from jigclu.config import load_config
from jigclu.data import load_dataset
from jigclu.export import load_backbone_weights
from jigclu.models import torchvision_resnet
from jigclu.trainers.knn import KnnMonitor


def main(argv: list[str]) -> int:
    ckpt, out, overrides = argv[0], Path(argv[1]), argv[2:]
    cfg = load_config(DEFAULT_CONFIG, overrides)
    size = cfg.data.image_size or cfg.jigsaw.crop_size
    train, test = (load_dataset(cfg.data.dataset, split, image_size=size) for split in ("train", "test"))
    if cfg.data.limit:
        train = train.subset(torch.arange(min(cfg.data.limit, len(train))))
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp, "backbone.pt")
        jigclu = Path(sys.executable).with_name("jigclu")
        subprocess.run([str(jigclu), "export", ckpt, str(exported)], check=True, stdout=subprocess.DEVNULL)
        net = torchvision_resnet(cfg.model.arch, cfg.model.width)
        keys = net.load_state_dict(torch.load(exported, weights_only=True), strict=False)
    if sorted(keys.missing_keys) != ["fc.bias", "fc.weight"] or keys.unexpected_keys:
        raise SystemExit(f"export_check: the export does not fit torchvision's ResNet: {keys}")
    net.fc = torch.nn.Identity()  # pooled features, as the benchmark scores them
    monitor = KnnMonitor(train.images, train.labels, test.images, test.labels, train.num_classes,
                         cfg.jigsaw.crop_size, cfg.monitor.k, cfg.monitor.knn_temperature, probe=True, seed=cfg.seed)
    found = monitor.evaluate(net, torch.device("cpu"))
    exported_scores = {"probe": found["probe_top1"], "knn": found["knn_top1"]}
    original = score(cfg, load_backbone_weights(ckpt).state, train, test)
    result = {"torchvision_class": f"{type(net).__module__}.{type(net).__name__}", "export": exported_scores,
              "checkpoint": {k: original[k] for k in ("probe", "knn")},
              "probe_diff": exported_scores["probe"] - original["probe"]}
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main(sys.argv[1:]))
