"""Ray Data wrapper: a :class:`~jigclu.data.stream.StreamPlan` as a streaming Ray Dataset.

This, :mod:`jigclu.ray_data_loop` and :mod:`jigclu.ray_train` are the only ``jigclu`` modules that
import Ray Data. The dataset is ``from_items(unit numbers) -> randomize_block_order ->
map_batches(DecodeUnits)``: the unit order is shuffled before anything is read (a block shuffle
*after* the read would hold the whole dataset in the object store), seeded by ``seed`` and the
execution index, so each pass (an epoch, or several capped epochs:
:class:`~jigclu.data.stream_loader.StreamLoader`) reads the row groups in a different, seeded
order. Reading and decoding run in Ray Data tasks of ``data.decode_cpus`` CPUs each, on any node
with CPUs; Ray Train splits the stream between its workers (``streaming_split(equal=True)``: every
worker gets as many rows, up to ``world_size - 1`` rows of a pass are left out) and re-splits it at
the new size when an elastic run changes size.

What is deterministic: the unit order of the k-th read of a dataset (``seed``, k), each unit's
rows, and each worker's local shuffle (seed, the pass's first epoch, rank). What is not: which
worker gets which unit (Ray hands blocks to whichever worker asks first), and so the exact
batches; and the read count restarts when Ray Train restarts its worker group, so a resumed run
reads in another order.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
import ray.data
from ray.data import DataContext, RandomSeedConfig

from jigclu.config import RunConfig
from jigclu.data.stream import STREAM_NAME, StreamPlan
from jigclu.data.decode import DecodeUnits
from jigclu.ray_data_loop import IdleWait


def quiet_data_context(verbose: bool = False) -> None:
    """No Ray Data progress bars or per-operator logs unless ``--verbose``."""
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    ctx.execution_options.verbose_progress = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def stream_dataset(plan: StreamPlan, seed: int, decode_cpus: float = 0.5, raw: bool = False) -> ray.data.Dataset:
    """The training rows of ``plan`` as a Ray Dataset of decoded uint8 chunks (see the module docstring);
    ``raw``: of their encoded bytes, for the workers to decode (``data.decode=device``)."""
    # from_items: the unit numbers are made here, not by read tasks (those want a whole CPU, which a
    # node whose CPUs Train's workers hold cannot give: the stream would wait for it forever)
    units = ray.data.from_items([{"id": i} for i in range(len(plan.units))], override_num_blocks=len(plan.units))
    units = units.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    ds = units.map_batches(DecodeUnits(plan, raw=raw), batch_size=1, batch_format="numpy", num_cpus=decode_cpus)
    # travels with the dataset to the SplitCoordinator: its scheduling loop waits instead of spinning
    ds.context.custom_execution_callback_classes = [*ds.context.custom_execution_callback_classes, IdleWait]
    return ds


def train_datasets(cfg: RunConfig, plan: StreamPlan | None) -> dict[str, Any] | None:
    """``datasets=`` for the run's TorchTrainer: the stream of ``plan`` (the run's, ``run_plan``), if any."""
    if plan is None:
        return None
    return {STREAM_NAME: stream_dataset(plan, cfg.seed, cfg.data.decode_cpus, raw=cfg.data.decode == "device")}


__all__ = ["quiet_data_context", "stream_dataset", "train_datasets"]
