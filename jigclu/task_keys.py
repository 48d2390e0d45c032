"""Which config keys each task reads, and which key does a job on the other tasks.

One :class:`~jigclu.config.RunConfig` serves every task, so ``jigclu linear ... optim.lr=5
train.epochs=10`` validates, and the run then trains 100 epochs at ``eval.lr`` as if the
overrides were not there; a sweep of task ``linear`` over ``loss.temperature`` would search a
knob that does nothing. :data:`READS` declares, once, what each task reads (read off the code:
``jigclu/trainers/``, ``jigclu/launch.py``, ``jigclu.pretrained.adopt_pretrained``, the kNN
monitor, the streaming loader); :func:`refuse_unread` turns a key outside it into one
:class:`ConfigError` naming the key that does that job (``linear does not read optim.lr; it
reads eval.lr``), before anything starts.

What is checked: explicit ``key=value`` overrides (:func:`load_task_config`, the CLI's) and a
sweep's ``config:`` and ``space`` keys (:func:`refuse_unread_in_sweep`, from ``tune.space.validate_sweep``).
Config files are not: one file is often the recipe of a pretraining and of its evaluations
(``configs/fashion_mnist.yaml``), so sections only another task reads are expected there.
``tests/test_task_keys.py`` records what each task really reads on a tiny run and fails when it strays
from this declaration.
"""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import BaseModel

from jigclu.config import RunConfig, load_config, parse_overrides
from jigclu.errors import ConfigError

# Read by every task: where the run lives, its data, the loop's own knobs, Ray. A section's name
# stands for all of its keys.
_EVERY_TASK = (
    "name", "output_dir", "storage", "seed", "device", "scaling",
    "data.dataset", "data.image_size", "data.num_workers", "data.on_corrupt", "data.limit", "data.val_size",
    "data.val_seed", "data.loader", "data.stream_min_images", "data.shuffle_buffer", "data.decode_cpus",
    "data.decode",  # data.loader=ray_data streams every trainer (jigclu/data/stream_runs.py)
    "train.steps_per_epoch", "train.amp", "train.progress", "train.keep_checkpoints", "train.checkpoint_every_s",
)
# The downstream classifier (trainers/classify.py, trainers/protocols.py resolve_eval, export.adopt_pretrained):
# its recipe is eval.*, its backbone model.arch/width; no heads, no jigsaw, no loss, no monitor.
_CLASSIFY = (
    "model.arch", "model.width", "eval.pretrained", "eval.epochs", "eval.lr", "eval.milestones", "eval.gamma",
    "eval.weight_decay", "eval.momentum", "eval.batch_size", "eval.image_size", "eval.val_limit",
)

READS: dict[str, tuple[str, ...]] = {
    # trainers/pretrain.py, the kNN monitor (evaluation/knn.py), the stream (data/stream.py, ray_data.py)
    # and the method's step (jigclu/methods/; keys only JigClu reads: METHOD_SKIPS)
    "pretrain": (*_EVERY_TASK, "method", "data.batch_size", "model", "jigsaw", "loss", "optim", "train.epochs",
                 "train.epoch_s", "monitor"),
    # input side eval.image_size, else jigsaw.crop_size; random-resized crops down to eval.crop_scale;
    # a frozen backbone: the classifier trains at eval.lr
    "linear": (*_CLASSIFY, *_EVERY_TASK, "jigsaw.crop_size", "eval.crop_scale"),
    "semi": (*_CLASSIFY, *_EVERY_TASK, "jigsaw.crop_size", "eval.crop_scale", "eval.classifier_lr", "eval.labels",
             "eval.label_seed"),
    # CIFAR protocols: pad-4 crops at the dataset's own size (or eval.image_size), so no jigsaw.crop_size and
    # no eval.crop_scale; eval.protocol picks finetune or linear
    "finetune": (*_CLASSIFY, *_EVERY_TASK, "eval.classifier_lr", "eval.protocol"),
}

# Keys of a task's declaration that a pretraining method does not read (jigclu/methods/simclr.py: whole-image
# views at jigsaw.crop_size, NT-Xent at loss.temperature; no montages, no location head).
METHOD_SKIPS: dict[str, tuple[str, ...]] = {
    "jigclu": (),
    "simclr": ("model.grid", "jigsaw.cross_ratio", "jigsaw.montage_scope", "loss.w_clu", "loss.w_loc"),
}

# Keys doing the same job in pretraining and in the downstream recipe: on a task that reads one of a
# pair and not the other, the other is refused with the one it reads.
SAME_JOB = (
    ("train.epochs", "eval.epochs"),
    ("optim.lr", "eval.lr"),
    ("optim.momentum", "eval.momentum"),
    ("optim.weight_decay", "eval.weight_decay"),
    ("data.batch_size", "eval.batch_size"),
    ("jigsaw.crop_size", "eval.image_size"),
    ("jigsaw.crop_scale", "eval.crop_scale"),
    ("monitor.test_limit", "eval.val_limit"),
    ("eval.classifier_lr", "eval.lr"),  # linear: the classifier is all that trains, at eval.lr
)


def _declared(task: str) -> tuple[str, ...]:
    if task not in READS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(READS)}")
    return READS[task]


def reads(task: str, key: str) -> bool:
    """Does ``task`` read the dotted ``key`` (``optim.lr``)?"""
    return any(key == d or key.startswith(d + ".") for d in _declared(task))


def method_skips(task: str, methods: Iterable[str], key: str) -> str | None:
    """One line when every method of ``methods`` skips ``key`` of pretraining; else None."""
    methods = sorted(set(methods))
    if task != "pretrain" or not methods or not all(key in METHOD_SKIPS.get(m, ()) for m in methods):
        return None
    readers = [m for m in METHOD_SKIPS if key not in METHOD_SKIPS[m]]
    return (f"method {' and '.join(methods)} does not read {key} (only method {', '.join(readers)} "
            f"{'does' if len(readers) == 1 else 'do'})")


def section_model(section: str) -> type[BaseModel] | None:
    """The model of a config section (``optim`` -> OptimConfig); None for a top-level key."""
    field = RunConfig.model_fields.get(section)
    ann = field.annotation if field is not None else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def is_leaf(key: str) -> bool:
    """``key`` names one setting of the config (``seed``, ``optim.lr``), not a section or a typo."""
    section, _, leaf = key.rpartition(".")
    if not section:
        return key in RunConfig.model_fields and section_model(key) is None
    model = section_model(section)
    return model is not None and leaf in model.model_fields


def instead(task: str, key: str) -> str | None:
    """The key ``task`` reads for the job ``key`` does elsewhere (``linear``, ``optim.lr`` -> ``eval.lr``)."""
    for pair in SAME_JOB:
        for mine, other in (pair, pair[::-1]):
            if key == mine and reads(task, other):
                return other
    return None


def unread_message(task: str, key: str) -> str | None:
    """None when ``task`` reads ``key``; else one line saying so, and what ``task`` reads instead."""
    if reads(task, key):
        return None
    other = instead(task, key)
    if other is not None:
        return f"{task} does not read {key}; it reads {other}"
    readers = [t for t in READS if reads(t, key)]
    who = f" (only {', '.join(readers)} {'does' if len(readers) == 1 else 'do'})" if readers else ""
    section = key.rpartition(".")[0]
    model = section_model(section)
    mine = [k for k in (model.model_fields if model else ()) if reads(task, f"{section}.{k}")]
    if mine:
        return f"{task} does not read {key}{who}; of {section}.* it reads {', '.join(mine)}"
    return f"{task} does not read {key}{who}; it ignores the whole {section} section"


def leaf_keys(nested: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"optim": {"lr": 5}, "seed": 1}`` -> ``["optim.lr", "seed"]``."""
    out: list[str] = []
    for key, value in nested.items():
        path = f"{prefix}{key}"
        out.extend(leaf_keys(value, path + ".") if isinstance(value, dict) else [path])
    return out


def refuse_unread(task: str, keys: Iterable[str], where: str = "", methods: Iterable[str] = ()) -> None:
    """One :class:`ConfigError` for the first of ``keys`` (dotted) that ``task`` never reads, or that
    none of the pretraining ``methods`` the run may use reads.

    Keys that name no setting (a typo, a whole section) are left to the config's own validation,
    which says "unknown key".
    """
    _declared(task)  # an unknown task is one line too
    methods = list(methods)
    for key in map(str, keys):
        message = (unread_message(task, key) or method_skips(task, methods, key)) if is_leaf(key) else None
        if message is not None:
            raise ConfigError(f"{where}{message}")


def refuse_unread_in_sweep(task: str, config: dict[str, Any], space: Iterable[str],
                           methods: Iterable[str] = ()) -> None:
    """A sweep's own keys: its ``config:`` (the user's overrides; its ``base`` may be a recipe shared with
    other tasks) and its ``space``; ``methods``: those its trials may run (a key some of them read is kept)."""
    methods = list(methods)
    refuse_unread(task, leaf_keys(config), "sweep config: ", methods)
    refuse_unread(task, space, "space: ", methods)


def load_task_config(task: str, path: str | None, overrides: list[str]) -> RunConfig:
    """``task``'s config: the YAML file ``path`` plus ``key=value`` overrides, validated; an override
    of a key ``task`` never reads is refused first (the file may be a recipe shared with other tasks),
    then one the configured method never reads."""
    keys = leaf_keys(parse_overrides(overrides))
    refuse_unread(task, keys)
    cfg = load_config(path, overrides)
    refuse_unread(task, keys, methods=[cfg.method])
    return cfg


__all__ = ["load_task_config", "refuse_unread_in_sweep", "READS", "SAME_JOB", "METHOD_SKIPS", "method_skips", "reads", "instead", "unread_message",
           "leaf_keys", "refuse_unread", "is_leaf", "section_model"]
