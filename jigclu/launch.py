"""Start a training task: fit its config, pick its run directory, run it here or on Ray.

``scaling.workers: 0`` (the default) runs the loop in this process; ``N`` or ``[min, max]``
hands the same loop to Ray Train (:mod:`jigclu.ray_train`, a Ray wrapper module). Every run
lives under one storage root, ``storage`` (a local path, ``file://``, ``s3://`` or ``gs://``)
or else ``output_dir``, at ``<root>/<name>`` (:class:`jigclu.runs.RunLayout`).
"""

from __future__ import annotations

from typing import Any, Callable

from jigclu import storage
from jigclu.config import RunConfig
from jigclu.context import LocalContext, resolve_device
from jigclu.data.stream_runs import choose_loader
from jigclu.preempt import stop_on_sigterm
from jigclu.progress import Display
from jigclu.runs import cleanup_failed, open_run, run_name, run_root
from jigclu.trainers import DOWNSTREAM, run_task, task_class

def prepare(task: str, cfg: RunConfig, notify: Callable[[str], None] | None = None) -> RunConfig:
    """The run's config, resolved completely before anything starts: every run (``jigclu <task>``, Ray
    Train, a sweep's trial) starts from what this returns, and no trainer resolves anything again.

    Downstream tasks adopt their pretrained checkpoint's ``model.arch``/``model.width`` where
    the user set none (:func:`jigclu.pretrained.adopt_pretrained`) and get their protocol's paper
    defaults filled in, the input size included (the dataset's own for finetune), so a bad
    checkpoint fails before a run directory exists and the saved ``config.yaml`` (written once,
    :func:`jigclu.runs.RunLayout.save_config`) says exactly what ran. Then the run's name, its
    storage's syntax and its loader.
    """
    task_class(task)  # an unknown task is one line
    if task in DOWNSTREAM:
        from jigclu.pretrained import adopt_pretrained
        from jigclu.trainers.protocols import resolve_eval

        cfg, notes = adopt_pretrained(cfg)
        for note in notes:
            (notify or print)(note)
        cfg = resolve_eval(cfg, task, native_size(cfg) if task == "finetune" else None)
    cfg.name = run_name(task, cfg.name)
    storage.check_syntax(run_root(cfg))
    cfg.data.loader = choose_loader(task, cfg)  # the saved config says which loader ran
    return cfg


def native_size(cfg: RunConfig) -> int | None:
    """The side finetune trains at when ``eval.image_size`` is unset: ``data.image_size``, else the
    training images' own (lazy and ``parquet:`` sources read one image for it)."""
    if cfg.eval.image_size is not None:
        return None
    if cfg.data.image_size is not None:
        return cfg.data.image_size
    from jigclu.data import load_dataset
    from jigclu.data.datasets import parse_spec

    kind, location = parse_spec(cfg.data.dataset)
    if kind == "parquet" and location:  # its metadata, or one image: never the split's bytes
        from jigclu.data.stream import plan_stream

        return int(max(plan_stream(location).image_size))

    return int(max(load_dataset(cfg.data.dataset, "train", on_corrupt=cfg.data.on_corrupt).image_size))


def launch(task: str, cfg: RunConfig, *, resume: bool = False, verbose: bool = False, progress: Display = True,
           address: str | None = None, notify: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``task`` with ``cfg``; returns the trainer's summary with ``run_dir`` added. ``progress``:
    :data:`jigclu.progress.Display` (``train.progress=false`` turns it off)."""
    cfg = prepare(task, cfg, notify)
    if cfg.scaling.workers != 0:
        from jigclu.ray_train import launch_ray  # noqa: PLC0415 - only this path needs Ray

        return launch_ray(task, cfg, resume=resume, verbose=verbose, progress=progress, address=address)
    device = resolve_device(cfg.device)
    layout, created = open_run(cfg, resume)
    layout.save_config(cfg)
    ctx = LocalContext(layout.root, device=device, resume=resume, progress=progress if cfg.train.progress else False,
                       keep=cfg.train.keep_checkpoints)
    with stop_on_sigterm():  # SIGTERM: a checkpoint at the next step, then Preempted (jigclu.preempt)
        summary = cleanup_failed(layout, created, lambda: run_task(task, cfg, ctx))
    summary["run_dir"] = layout.root
    return summary


__all__ = ["launch", "prepare", "native_size"]
