"""Semi-supervised fine-tuning on 1% or 10% of the labels (the paper's supplementary section 3.2).

The whole network trains, with **two learning rates that hold for the whole run**: the
backbone's and the classifier's are separate optimizer parameter groups and one MultiStepLR
scales both by the same gamma (x0.1 at epochs 30, 60, 90 of 100). The reference script
overwrote the classifier's rate with the backbone's every epoch, so its separate rates never
took effect; here each group keeps its own. Paper defaults: 10% labels: backbone 0.01,
classifier 0.2; 1%: backbone 0.02, classifier 5.0; any other fraction: the 10% values.

The labeled subset is ``eval.labels``: ``1%``, ``10%`` or a fraction in (0, 1], drawn
class-balanced with ``eval.label_seed``; or a file listing one training image per line (its
index in the train split, or for folder datasets its file name, ``class/name.png`` when a
bare name is ambiguous). The subset used is saved in the run directory as
``labels_subset.txt`` (indices, readable back as a labels file) and in every checkpoint, and a
resumed run trains on the checkpoint's subset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jigclu import storage
from jigclu.config import RunConfig, label_fraction
from jigclu.context import RunContext
from jigclu.data import balanced_subset_indices
from jigclu.data.splits import label_file_entries
from jigclu.data.images import ImageDataset
from jigclu.errors import ConfigError
from jigclu.trainers.classify import ClassifyTask

SUBSET_FILE = "labels_subset.txt"
_AMBIGUOUS = -1


class SemiTask(ClassifyTask):
    """The whole network on a labeled subset; the subset is saved beside the checkpoints."""

    name = "semi"

    def select(self, cfg: RunConfig, train: ImageDataset, state: dict[str, Any] | None) -> tuple[Tensor, str]:
        return select_labels(cfg, train, state)

    def on_start(self, ctx: RunContext) -> None:
        layout = ctx.where()
        if layout is not None and self.data.subset is not None:
            storage.write_atomic(layout.file(SUBSET_FILE), subset_text(self.cfg, self.data.note, self.data.subset))


def select_labels(cfg: RunConfig, train: ImageDataset, state: dict[str, Any] | None) -> tuple[Tensor, str]:
    """Indices of the labeled training images (the checkpoint's own when resuming)."""
    if state is not None and state.get("labels_subset") is not None:
        idx = torch.as_tensor(state["labels_subset"], dtype=torch.long)
        return idx, f"{len(idx)} labeled images (from the checkpoint)"
    spec = cfg.eval.labels
    fraction = label_fraction(spec)
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:  # also checked by the config; trainers may get raw dicts
            raise ConfigError(f"eval.labels: label fraction must lie in (0, 1], got {spec!r}")
        idx = balanced_subset_indices(train.labels, fraction=fraction, seed=cfg.eval.label_seed)
        return idx, f"{spec} labels, class-balanced (label_seed {cfg.eval.label_seed}): {len(idx)} images"
    idx = read_label_file(spec, train)
    return idx, f"labels from {spec}: {len(idx)} images"


def read_label_file(path: str, train: ImageDataset) -> Tensor:
    """Parse a labels file: one training image per line, by index or (folder datasets) by name.

    Blank lines and ``#`` comments are skipped. Any entry that names no image of the train
    split is a :class:`ConfigError` naming the first one, raised before anything is written.
    """
    file = Path(path).expanduser()
    entries = label_file_entries(path)
    names: dict[str, int] | None = None
    chosen, unknown, ambiguous = [], [], []
    for entry in entries:
        if entry.isdigit():
            index = int(entry)
            if index < len(train):
                chosen.append(index)
            else:
                unknown.append(entry)
            continue
        names = names if names is not None else _name_index(train)
        index = names.get(entry.replace("\\", "/").strip("/"))
        if index is None:
            unknown.append(entry)
        elif index == _AMBIGUOUS:
            ambiguous.append(entry)
        else:
            chosen.append(index)
    if unknown:
        what = "indices and file names" if names else "indices"
        raise ConfigError(f"eval.labels: {file} names {len(unknown)} unknown image(s) of the "
                          f"{len(train)}-image train split (first: {unknown[0]!r}; it takes {what})")
    if ambiguous:
        raise ConfigError(f"eval.labels: {file}: {ambiguous[0]!r} matches several images; "
                          f"give its class folder too (class/{ambiguous[0]})")
    return torch.tensor(sorted(set(chosen)), dtype=torch.long)


def _name_index(train: ImageDataset) -> dict[str, int]:
    """Every path suffix (``name.png``, ``class/name.png``, ...) of a folder dataset's images."""
    paths = getattr(getattr(train, "blobs", None), "paths", None) or []
    index: dict[str, int] = {}
    for i, path in enumerate(paths):
        parts = Path(path).parts
        for start in range(len(parts)):
            key = "/".join(parts[start:]).lstrip("/")
            index[key] = _AMBIGUOUS if key in index and index[key] != i else i
    return index


def subset_text(cfg: RunConfig, note: str, subset: Tensor) -> str:
    """``labels_subset.txt``: indices, one per line, readable back as a labels file."""
    header = (f"# jigclu semi labels: {note}\n"
              f"# indices into the {cfg.data.dataset} train split"
              f"{f' (first {cfg.data.limit} images)' if cfg.data.limit else ''}; "
              f"pass this file as --labels to train on the same subset\n")
    return header + "\n".join(str(int(i)) for i in subset.tolist()) + "\n"


__all__ = ["SemiTask", "select_labels", "read_label_file", "SUBSET_FILE"]
