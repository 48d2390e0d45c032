"""The downstream trainers stream: a semi run's labeled subset is drawn from the rows' labels alone
(the images of the in-memory subset, a labels file still works, a row that does not exist is one
line), and linear and semi on 2 Ray Train workers streaming from an S3 endpoint (moto on 127.0.0.1)
score as the same Parquet read into memory does, with less memory per worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from benchmarks.harness import cluster_box
from jigclu.config import load_config
from jigclu.data.splits import stack_items, training_splits
from jigclu.data.decode import DecodeUnits
from jigclu.data.stream_runs import plan_for
from jigclu.errors import ConfigError
from jigclu.runs import read_metrics
from jigclu.trainers.semi import SUBSET_FILE, select_labels
from stream_data import write_source

HERE = Path(__file__).resolve().parent
TINY = ["model.width=8", "data.image_size=32", "jigsaw.crop_size=32", "train.progress=false", "eval.epochs=3",
        "eval.batch_size=64", "eval.milestones=[]", "seed=3"]


def _streamed(plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row the plan streams, decoded as the Ray Data tasks decode them, in plan order."""
    decoder = DecodeUnits(plan)
    chunks = [c for i in range(len(plan.units)) for c in decoder.decode_unit(i)]
    return (torch.from_numpy(np.concatenate([c["image"] for c in chunks])),
            torch.from_numpy(np.concatenate([c["label"] for c in chunks])))


@pytest.mark.parametrize("labels", ["10%", "file"])
def test_semi_subset_from_row_labels_is_the_in_memory_subset(tmp_path, labels):
    """Fails if the streamed subset is drawn differently from memory's (other rows, other images), or
    a labels file's indices count rows in another order."""
    src = write_source(tmp_path / "pq", train=320, test=40, files=3, row_group=30)
    if labels == "file":
        (tmp_path / "labels.txt").write_text("# chosen by hand\n5\n17\n\n200\n319\n")
        labels = str(tmp_path / "labels.txt")
    cfg = load_config(None, [*TINY, f"data.dataset=parquet:{src}", f"eval.labels={labels}", "eval.label_seed=4"])
    train, _ = training_splits(cfg)
    idx, _ = select_labels(cfg, train, None)
    plan = plan_for(cfg, "semi")
    assert plan.labeled == idx.tolist() and plan.num_rows == len(idx)
    images, labels_of = _streamed(plan)
    want_images, want_labels = stack_items(train, idx)
    assert torch.equal(labels_of, want_labels) and torch.equal(images, want_images)
    if labels.endswith(".txt"):
        assert plan.labeled == [5, 17, 200, 319]


def test_bad_labels_are_one_line_before_anything(tmp_path):
    """A semi labels file naming rows that do not exist, or naming files; a source with null labels
    for linear (read from the label statistics, no image): one line each, no run directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = write_source(tmp_path / "pq", train=120, test=20, files=1)
    nulls = write_source(tmp_path / "nulls", train=120, test=20, files=1)
    table = pq.read_table(nulls / "part-00000.parquet")
    labels = [None if i in (7, 130) else v for i, v in enumerate(table["label"].to_pylist())]
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))
    pq.write_table(table, nulls / "part-00000.parquet", row_group_size=40)
    (tmp_path / "labels.txt").write_text("3\n120\n")
    (tmp_path / "names.txt").write_text("cat/1.png\n")
    from jigclu import cli

    for task, source, extra, words in [
            ("semi", src, ["--labels", str(tmp_path / "labels.txt")],
             "names 1 row(s) that do not exist in the 120-row train split"),
            ("semi", src, ["--labels", str(tmp_path / "names.txt")], "a parquet: source's rows are named by their index"),
            ("linear", nulls, [], "has 2 rows without a label; linear trains and scores on labels")]:
        args = [task, *extra, f"data.dataset=parquet:{source}", "data.loader=ray_data", "scaling.workers=2",
                f"output_dir={tmp_path / 'runs'}", *TINY]
        proc = subprocess.run([sys.executable, "-m", "jigclu.cli", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "runs").exists()  # no run directory
    assert cli  # the CLI module is what runs above


@pytest.mark.ray
@pytest.mark.slow
def test_linear_and_semi_stream_from_s3_on_two_workers_as_memory_scores(tmp_path):
    """Fails if the stream feeds images with other rows' labels (no learning), a worker scores a row
    group twice or none (the scored count), the semi subset differs from memory's, a trainer reads
    the split into every worker (peak RSS), or an epoch is lost."""
    from jigclu.launch import launch

    src = write_source(tmp_path / "pq", train=1200, test=200, files=3, row_group=100, side=128)
    out = tmp_path / "out"
    semi = [*TINY, "eval.labels=50%", "eval.batch_size=32", "eval.lr=0.1", "eval.classifier_lr=0.1",
            "data.shuffle_buffer=128"]
    # semi in memory, in this process: its run is also the backbone the linear runs evaluate
    launch("semi", load_config(None, [*semi, f"data.dataset=parquet:{src}", f"output_dir={out}", "name=semi-memory"]),
           progress=False)
    s3 = cluster_box.S3Endpoint(tmp_path)
    try:
        s3.create_bucket("data")
        pafs.copy_files(str(src), "data/pq", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=s3.filesystem())
        s3_uri = f"s3://data/pq?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
        env = {**os.environ, **s3.env, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(HERE)}
        proc = subprocess.run([sys.executable, str(HERE / "_stream_downstream_run.py"), str(out), str(src), s3_uri,
                               str(out / "semi-memory"), *semi], env=env, capture_output=True, text=True, timeout=500)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        s3.stop()
    runs = {name: read_metrics(out / name) for name in ("linear-memory", "linear-stream", "semi-stream", "semi-memory")}
    for name, metrics in runs.items():
        assert [m["epoch"] for m in metrics] == ([0, 1] if name.startswith("linear") else [0, 1, 2]), name
        assert all(m["val_images"] == 200 for m in metrics), name  # the whole test split, each row once
    for task in ("linear", "semi"):
        memory, streamed = runs[f"{task}-memory"][-1], runs[f"{task}-stream"][-1]
        assert streamed["train_images"] == memory["train_images"] == (1200 if task == "linear" else 600)
        # same data, model and seed; only the order and make-up of the batches differ (chance: 25%). The
        # test images of a class are alike, so the test score moves in steps of 25 while semi trains: its
        # best epoch is compared, and the training accuracy over the last epoch's 600 or 1200 images
        assert abs(streamed["train_top1"] - memory["train_top1"]) <= 10, (task, streamed, memory)
        key = "val_top1" if task == "linear" else "best_val_top1"
        assert memory[key] >= 75 and abs(streamed[key] - memory[key]) <= (25 if task == "semi" else 5), (task, streamed, memory)
    assert ((out / "semi-stream" / SUBSET_FILE).read_text().splitlines()[2:]
            == (out / "semi-memory" / SUBSET_FILE).read_text().splitlines()[2:])
    # the memory run's workers each hold the train split (~40 MB of 128 px PNGs, and their decoded
    # images); the streamed run's, a shuffle buffer of decoded 32 px images
    rss = {name: runs[name][-1]["peak_rss_mib"] for name in ("linear-memory", "linear-stream")}
    assert rss["linear-stream"] < rss["linear-memory"] - 40, rss
