"""Streaming sources without Ray: the plan from Parquet metadata, decoding, exact batches, bad input.

The Ray Data path itself (2 Ray Train workers, S3, a killed worker) is in tests/test_stream_ray.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jigclu.config import load_config
from jigclu.data.stream import plan_stream
from jigclu.data.stream_runs import choose_loader
from jigclu.data.decode import DecodeUnits
from jigclu.data.stream_loader import StreamLoader, read_sample
from jigclu.errors import ConfigError, DataError
from stream_data import CLASSES, write_source

ROOT = Path(__file__).resolve().parents[1]


class UnitShard:
    """The plan's units decoded in this process, in order: the same columns, through the same
    ``iter_batches`` signature, as the Ray Data shard a Ray Train worker gets."""

    def __init__(self, plan, units=None, raw=False) -> None:
        self.decoder = DecodeUnits(plan, units, raw=raw)
        self.calls: list[dict] = []

    def iter_batches(self, *, batch_size, batch_format, local_shuffle_buffer_size, local_shuffle_seed):
        assert batch_format == "numpy"
        self.calls.append({"buffer": local_shuffle_buffer_size, "seed": local_shuffle_seed})
        for index in range(len(self.decoder.parts)):
            yield from self.decoder.decode_unit(index)


def test_plan_counts_rows_from_metadata_and_splits_mixed_row_groups(tmp_path):
    src = write_source(tmp_path / "pq", train=310, test=90, files=3, row_group=40)
    plan = plan_stream(str(src))
    assert plan.num_rows == 310 and sum(u.kept for u in plan.test_units) == 90
    assert plan.classes == [str(c) for c in range(CLASSES)] and plan.channels == 3 and plan.image_size == (32, 32)
    mixed = [u for u in plan.units if u.skip]
    assert len(mixed) == 1  # the one row group holding rows of both splits
    keys = np.concatenate([np.setdiff1d(np.arange(u.rows), u.skip) + u.offset for u in plan.units])
    assert sorted(keys.tolist()) == list(range(310))  # every train row once, keys = source row numbers
    # image_size override and limit
    small = plan_stream(str(src), image_size=16, limit=100)
    assert small.image_size == (16, 16) and small.num_rows == 100


def test_validation_split_is_carved_class_balanced_seeded_and_disjoint(tmp_path):
    src = write_source(tmp_path / "pq", train=320, test=80, row_group=40)
    plan = plan_stream(str(src), val_size=40, val_seed=3)
    val_keys = {u.offset + r for u in plan.val_units for r in range(u.rows) if r not in u.skip}
    train_keys = {u.offset + r for u in plan.units for r in range(u.rows) if r not in u.skip}
    assert len(val_keys) == 40 and plan.num_rows == 280
    assert not val_keys & train_keys and len(val_keys | train_keys) == 320
    assert np.bincount(np.array(sorted(val_keys)) % CLASSES).tolist() == [10] * CLASSES  # label = row % 4
    # only a sample of row groups holds it (about 4x its size), and the seed decides which
    assert len(plan.val_units) <= 6 < len(plan.units)  # 160 rows are 4 to 6 of the 10 train row groups
    again = plan_stream(str(src), val_size=40, val_seed=3)
    other = plan_stream(str(src), val_size=40, val_seed=4)
    key = lambda p: sorted(u.offset + r for u in p.val_units for r in range(u.rows) if r not in u.skip)  # noqa: E731
    assert key(again) == key(plan) and key(other) != key(plan)


def test_loader_yields_exact_batches_and_skips_and_counts_corrupt_images(tmp_path):
    src = write_source(tmp_path / "pq", train=200, test=0, files=2, row_group=30, corrupt=(5, 77))
    plan = plan_stream(str(src))
    shard = UnitShard(plan)
    loader = StreamLoader(shard, 16, seed=1, shuffle_buffer=64)
    loader.set_epoch(2)
    batches = list(loader)
    assert all(b[0].shape == (16, 3, 32, 32) and b[0].dtype == torch.uint8 for b in batches)
    keys = torch.cat([b[2] for b in batches]).tolist()
    assert len(batches) == 198 // 16 and len(set(keys)) == len(keys)  # refilled past the two bad rows
    assert 5 not in keys and 77 not in keys and loader.corrupt == 2 and loader.rows == 16 * len(batches)
    labels = torch.cat([b[1] for b in batches])
    assert torch.equal(labels, torch.tensor(keys) % CLASSES)  # each image keeps its own label
    assert shard.calls[-1]["buffer"] == 64 and shard.calls[-1]["seed"] is not None
    loader.set_epoch(3)
    list(loader)
    assert shard.calls[-1]["seed"] != shard.calls[-2]["seed"]  # a new local shuffle every epoch


def test_a_capped_epoch_leaves_its_pass_open_for_the_next(tmp_path):
    """Fails if a capped epoch restarts the stream (a new read, its start-up and read-ahead lost), if
    the next epoch repeats or skips rows of the open pass, or if an epoch that finds the open pass
    spent trains on nothing instead of reading a new one (the streamed elastic run saw 0 images)."""
    src = write_source(tmp_path / "pq", train=200, test=0, files=2, row_group=30)
    shard = UnitShard(plan_stream(str(src)))
    loader = StreamLoader(shard, 16)
    keys = []
    for epoch in range(3):  # 3 capped epochs of 4 steps: 192 of the pass's 200 rows, one read
        loader.set_epoch(epoch)
        keys += [b[2] for _, b in zip(range(4), loader)]
    assert len(shard.calls) == 1
    keys = torch.cat(keys).tolist()
    assert len(keys) == 192 == len(set(keys)) and set(keys) <= set(range(200))
    loader.set_epoch(3)  # 8 rows left in the open pass, no full batch: the epoch goes on with a new pass
    assert len([b for _, b in zip(range(4), loader)]) == 4 and len(shard.calls) == 2
    loader.set_epoch(4)  # 8 batches left in that pass
    assert len([b for _, b in zip(range(4), loader)]) == 4 and len(shard.calls) == 2
    loader.set_epoch(5)  # 4 left: the capped epoch keeps its 6 steps, going on with a third pass
    assert [len(b[0]) for _, b in zip(range(6), loader)] == [16] * 6 and len(shard.calls) == 3
    fresh = StreamLoader(UnitShard(plan_stream(str(src))), 16)
    fresh.set_epoch(0)  # uncapped: an epoch that started its own pass ends with it
    assert len(list(fresh)) == 200 // 16 and len(list(fresh)) == 200 // 16


def test_loader_fails_on_corrupt_image_with_one_line_naming_it(tmp_path):
    src = write_source(tmp_path / "pq", train=100, test=0, files=1, row_group=50, corrupt=(60,))
    loader = StreamLoader(UnitShard(plan_stream(str(src))), 10, on_corrupt="fail")
    with pytest.raises(DataError) as err:
        list(loader)
    assert "part-00000.parquet row 10" in str(err.value) and "\n" not in str(err.value)  # row 10 of group 1


def test_workers_stop_together_when_one_runs_short(tmp_path):
    """Two workers whose shards differ by a corrupt image: the short one says so and both stop at
    the same step (a worker stepping alone would wait forever in the next all-reduce)."""
    src = write_source(tmp_path / "pq", train=64, test=0, files=1, row_group=32, corrupt=(3,))
    plan = plan_stream(str(src))
    votes: list[list[bool]] = [[], []]

    def run(rank: int, other_has: list[bool]) -> int:
        shard = UnitShard(plan, [plan.units[rank]])
        it = iter(other_has)
        agree = lambda mine: votes[rank].append(mine) or (mine and next(it, False))  # noqa: E731
        return len(list(StreamLoader(shard, 8, agree=agree)))

    full = run(1, [True] * 10)  # worker 1's 32 good rows: 4 batches, then it has none
    short = run(0, [True] * 4)  # worker 0 has 31 good rows (3 batches) while worker 1 has 4
    assert full == 4 and short == 3 and votes[0] == [True, True, True, False]


def test_monitor_sample_is_bounded_and_seeded(tmp_path):
    src = write_source(tmp_path / "pq", train=320, test=80, row_group=40)
    plan = plan_stream(str(src))
    bank = read_sample(plan, plan.units, 50, seed=0, split="train")
    again = read_sample(plan, plan.units, 50, seed=0, split="train")
    assert len(bank) == 50 and bank.images.shape == (50, 3, 32, 32)
    assert torch.equal(bank.images, again.images)
    assert len(read_sample(plan, plan.test_units, None, seed=1, split="test")) == 80


def _cfg(*extra: str):
    return load_config(None, ["train.progress=false", *extra])


def test_loader_choice(tmp_path):
    src = write_source(tmp_path / "pq", train=120, test=20, files=1)
    parquet = f"data.dataset=parquet:{src}"
    no_test = f"data.dataset=parquet:{write_source(tmp_path / 'no-test', train=120, test=0, files=1)}"
    assert choose_loader("pretrain", _cfg(parquet, "scaling.workers=2")) == "memory"  # below the threshold
    assert choose_loader("pretrain", _cfg(parquet, "scaling.workers=2", "data.stream_min_images=100")) == "ray_data"
    assert choose_loader("pretrain", _cfg(parquet, "data.stream_min_images=100")) == "memory"  # one process
    for task in ("linear", "semi", "finetune"):  # every trainer streams a large source
        assert choose_loader(task, _cfg(parquet, "scaling.workers=2", "data.stream_min_images=100")) == "ray_data"
    assert choose_loader("pretrain", _cfg(parquet, "scaling.workers=2", "data.loader=ray_data")) == "ray_data"
    labels = tmp_path / "labels.txt"
    labels.write_text("3\n119\n120\n")
    for task, extra, words in [("pretrain", ["data.dataset=digits", "scaling.workers=2"], "parquet: sources"),
                               ("pretrain", [parquet], "scaling.workers >= 1"),
                               ("semi", [parquet, "scaling.workers=2", f"eval.labels={labels}"],
                                r"names 1 row\(s\) that do not exist in the 120-row train split .*\(first: 120\)"),
                               ("semi", [parquet, "scaling.workers=2", "eval.labels=nothing-here.txt"],
                                "neither a label fraction"),
                               ("linear", [no_test, "scaling.workers=2"], "no validation or test rows for linear")]:
        with pytest.raises((ConfigError, DataError), match=words):
            choose_loader(task, _cfg(*extra, "data.loader=ray_data"))


@pytest.mark.parametrize("problem", ["no_label", "no_files", "missing", "bad_scheme"])
def test_bad_streaming_source_is_one_line_before_any_worker_starts(tmp_path, problem):
    src = tmp_path / "pq"
    if problem == "no_label":
        write_source(src, columns=("image", "split"))
    elif problem == "no_files":
        src.mkdir()
        (src / "README.txt").write_text("no shards here")
    location = {"missing": str(tmp_path / "nowhere"), "bad_scheme": "s3://"}.get(problem, str(src))
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run([sys.executable, "-m", "jigclu.cli", "pretrain", f"data.dataset=parquet:{location}",
                           "data.loader=ray_data", "scaling.workers=2", f"output_dir={tmp_path / 'runs'}", "name=r"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    expected = {"no_label": "integer 'label' column", "no_files": "no .parquet files", "missing": "does not exist",
                "bad_scheme": "parquet"}[problem]
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "runs" / "r").exists()  # nothing written
    assert "ray" not in proc.stdout.lower()  # refused before Ray started


def test_converted_shards_stream_with_their_metadata(tmp_path):
    from jigclu.data import write_parquet

    write_parquet("digits", str(tmp_path / "pq"), rows_per_shard=500, image_size=16)
    plan = plan_stream(str(tmp_path / "pq"))
    assert plan.num_rows == pq.ParquetDataset(str(tmp_path / "pq")).read(columns=["split"]).column(0).to_pylist().count("train")
    assert plan.channels == 1 and plan.image_size == (16, 16) and len(plan.classes) == 10
    batch = next(iter(StreamLoader(UnitShard(plan), 32)))
    assert batch[0].shape == (32, 1, 16, 16)


def test_source_without_decodable_images_is_one_line(tmp_path):
    src = write_source(tmp_path / "pq", train=40, test=0, files=1, corrupt=tuple(range(40)))
    with pytest.raises(DataError, match="could be decoded") as err:
        plan_stream(str(src))
    assert "\n" not in str(err.value)


def test_a_decode_task_never_imports_torch(tmp_path):
    """Fails if a Ray Data decode task's process imports torch (about 2.4 CPU s and 670 MB per decode
    worker): the pickled DecodeUnits is loaded and run in a fresh interpreter, which must decode the
    unit's rows without torch in sys.modules."""
    import pickle
    import subprocess
    import sys

    src = write_source(tmp_path / "pq", train=40, test=0, files=1, row_group=40)
    (tmp_path / "udf.pkl").write_bytes(pickle.dumps(DecodeUnits(plan_stream(str(src)))))
    code = ("import pickle, sys, numpy as np\n"
            f"udf = pickle.loads(open({str(tmp_path / 'udf.pkl')!r}, 'rb').read())\n"
            "rows = sum(int(c['ok'].sum()) for c in udf({'id': np.array([0])}))\n"
            "assert rows == 40, rows\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
