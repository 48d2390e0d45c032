"""Reading a :class:`~jigclu.data.stream.StreamPlan` in a worker: batching its shard, sampling rows.

Free of Ray, so it runs (and is tested) in a plain process; the decoding itself, which runs in Ray
Data's tasks, is :class:`jigclu.data.decode.DecodeUnits` (torch-free).

* :class:`StreamLoader` turns a worker's shard (what ``ray.train.get_dataset_shard`` returns, or
  any object with the same ``iter_batches``) into exact ``(images, labels, keys)`` batches of the
  per-worker size: it drops the marked rows (or raises, with ``on_corrupt=fail``), refills the
  batch from the next rows, shuffles locally with a seed of (seed, epoch, rank), and keeps the
  workers in step: every step they agree that each still has a full batch (one tiny all-reduce),
  so a worker that ran short never leaves the others waiting in a collective. A capped epoch
  (``train.steps_per_epoch`` below a pass) leaves its pass open for the next epoch: restarting the
  stream every capped epoch cost its start-up and the decoded rows read ahead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from jigclu.data.decode import CHUNK_ROWS, DecodeUnits, read_rows, resolve
from jigclu.data.images import TensorImageDataset
from jigclu.data.stream import StreamPlan, Unit, sample_units
from jigclu.errors import DataError

Agree = Callable[[bool], bool]
"""``agree(mine)`` -> True when every worker says True (an all-reduce of ``min``; identity alone)."""


class StreamLoader:
    """Exact per-worker batches from a streaming shard (see the module docstring).

    Args:
        shard: has ``iter_batches(batch_size=, batch_format="numpy", local_shuffle_buffer_size=,
            local_shuffle_seed=)`` yielding dicts of :class:`DecodeUnits`' columns.
        batch_size: rows per worker per step.
        seed, rank: seed the per-epoch local shuffle as (seed, epoch, rank).
        on_corrupt: ``skip`` (count and leave out) or ``fail`` (raise :class:`DataError`).
        shuffle_buffer: rows of the local shuffle buffer (0: none).
        agree: how workers agree every step (``jigclu.dist.all_agree``).
        drop_last: leave out the rows short of a full batch at the end of the shard (pretraining); when
            False (the downstream trainers, as their in-memory loader does) they make a last, smaller
            batch, if every worker has some left.
        decoder: decodes each chunk of raw rows (``data.decode=device``:
            :class:`~jigclu.data.device_decode.DeviceDecoder`); None when the shard's rows are decoded.
    """

    def __init__(self, shard: Any, batch_size: int, *, seed: int = 0, rank: int = 0, on_corrupt: str = "skip",
                 shuffle_buffer: int = 0, agree: Agree = lambda mine: mine, drop_last: bool = True,
                 decoder: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.shard, self.batch_size, self.decoder = shard, batch_size, decoder
        self.seed, self.rank, self.on_corrupt = seed, rank, on_corrupt
        self.shuffle_buffer, self.agree, self.drop_last = shuffle_buffer, agree, drop_last
        self.epoch = 0
        self.rows = self.corrupt = 0  # this epoch, this worker
        self._source: Any = None  # the open pass of the shard (``iter_batches``), and what is left of it
        self._rows: Iterator[dict[str, np.ndarray]] | None = None
        self._pending: list[dict[str, np.ndarray]] = []
        self._held = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Start epoch ``epoch``. A stream cannot seek, so ``start`` (samples already drawn, on a
        mid-epoch resume) is not honoured: the epoch's remaining steps read a new pass of the stream,
        which may repeat images seen before the stop and miss others (the step count, and so the
        schedule, is exact; the data position is approximate)."""
        self.epoch = epoch
        self.rows = self.corrupt = 0

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        shuffle = self.shuffle_buffer > 0
        return self.shard.iter_batches(
            batch_size=self.batch_size, batch_format="numpy",
            local_shuffle_buffer_size=self.shuffle_buffer if shuffle else None,
            local_shuffle_seed=(self.seed * 1_000_003 + self.epoch * 1009 + self.rank) % 2**31 if shuffle else None)

    def _good_rows(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        for batch in batches:
            if self.decoder is not None:
                batch = self.decoder(batch)
            ok = np.asarray(batch["ok"], dtype=bool)
            if not ok.all():
                bad = np.flatnonzero(~ok)
                if self.on_corrupt == "fail":
                    raise DataError(f"corrupt image {batch['error'][bad[0]]} (data.on_corrupt=fail; "
                                    f"use data.on_corrupt=skip to leave such images out)")
                self.corrupt += len(bad)
                batch = {k: _rows_of(v, ok) for k, v in batch.items()}
            yield batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This epoch's batches. An epoch the loop stops early (``train.steps_per_epoch`` below a pass)
        leaves the pass open: the next epoch goes on where it stopped, with the rows read ahead. When that
        pass runs out within the epoch (its last rows short of a batch left out), the epoch goes on with a
        new pass (a new read of the stream: another unit order), so a capped epoch keeps its step count;
        an epoch that started its own pass ends with it, as an uncapped epoch does."""
        carried = self._rows is not None
        if not carried:
            self._start_pass()
        ended = False
        try:
            while True:
                while self._held < self.batch_size and (chunk := next(self._rows, None)) is not None:
                    self._pending.append(chunk)
                    self._held += len(chunk["label"])
                if not self.agree(self._held >= self.batch_size):  # some worker has no full batch left: all stop
                    if carried:  # the pass left open ran out within this epoch: it goes on with a new one
                        self.close()
                        self._start_pass()
                        carried = False
                        continue
                    break
                out, self._pending, self._held = _take(self._pending, self.batch_size)
                yield self._emit(out)
            # every worker agrees once more: a last, smaller batch when each has rows left
            if not self.drop_last and self.agree(self._held > 0):
                yield self._emit(_take(self._pending, min(self._held, self.batch_size))[0])
            ended = True
        finally:
            if ended:
                self.close()

    def _start_pass(self) -> None:
        self._source = self._batches()
        self._rows, self._pending, self._held = self._good_rows(self._source), [], 0

    def close(self) -> None:
        """End the open pass, if any: Ray Data stops this split's read now."""
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
        self._source = self._rows = None
        self._pending, self._held = [], 0

    def _emit(self, out: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.rows += len(out["label"])
        return _tensor(out["image"]), _tensor(out["label"]), _tensor(out["key"])


def _take(pending: list[dict[str, Any]], n: int) -> tuple[dict[str, Any], list, int]:
    """The first ``n`` rows of the pending chunks, and what is left (images may be tensors on a device:
    ``data.decode=device``)."""
    merged = {k: _concat([b[k] for b in pending]) for k in ("image", "label", "key")}
    rest = {k: v[n:] for k, v in merged.items()}
    out = {k: v[:n].contiguous() if isinstance(v, torch.Tensor) else np.ascontiguousarray(v[:n])
           for k, v in merged.items()}
    left = len(rest["label"])
    return out, ([rest] if left else []), left


def _concat(parts: list[Any]) -> Any:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate([np.asarray(p) for p in parts])


def _rows_of(values: Any, keep: np.ndarray) -> Any:
    if isinstance(values, torch.Tensor):
        return values[torch.from_numpy(keep).to(values.device)]
    return np.asarray(values)[keep]


def _tensor(values: Any) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.from_numpy(values)


def device_decoder(cfg: Any, plan: StreamPlan, device: torch.device) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The decoder of a worker's raw rows when ``data.decode=device`` (see :mod:`jigclu.data.device_decode`)."""
    if cfg.data.decode != "device":
        return None
    from jigclu.data.device_decode import DeviceDecoder

    return DeviceDecoder(plan.channels, plan.image_size, device)


def sample_chunks(plan: StreamPlan, units: list[Unit], limit: int | None, seed: int, part: tuple[int, int] = (0, 1)
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A bounded, seeded sample of ``units``' rows (``limit`` rows, all when None), one decoded chunk
    of uint8 images and labels at a time, corrupt images left out: only the row groups holding the
    sample are read, one at a time, so a pass that keeps only features holds no more images than that.
    ``part=(rank, world)``: this worker's share of the sample (every ``world``-th of its row groups)."""
    decoder, fs = DecodeUnits(plan, units), resolve(plan.location)[0]
    rank, world = part
    for unit, rows in sample_units(units, limit, seed)[rank::world]:
        data = read_rows(fs, unit, rows)
        for start in range(0, len(rows), CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            out = decoder.decode(data["image"][part], data["label"][part], unit.offset + rows[part],
                                 [unit.path] * len(rows[part]))
            ok = out["ok"]
            if ok.any():
                yield torch.from_numpy(out["image"][ok]), torch.from_numpy(out["label"][ok])


def read_sample(plan: StreamPlan, units: list[Unit], limit: int | None, seed: int, split: str) -> TensorImageDataset:
    """:func:`sample_chunks` decoded into memory (the streamed kNN monitor's bank or queries)."""
    chunks = list(sample_chunks(plan, units, limit, seed))
    if not chunks:
        raise DataError(f"parquet:{plan.location}: no decodable image in the {split} sample")
    return TensorImageDataset(torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]),
                              name=f"parquet:{plan.location}", split=split, classes=plan.classes)


__all__ = ["StreamLoader", "device_decoder", "read_sample", "sample_chunks"]
