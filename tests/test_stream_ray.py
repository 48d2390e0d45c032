"""The Ray Data path for real: 2 Ray Train workers streaming Parquet from local disk and from an S3
endpoint (moto on 127.0.0.1), and a streamed pretraining run that loses a worker and goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from benchmarks.harness import cluster_box
from ray_faults import KillOnce
from jigclu.config import load_config
from jigclu.runs import read_metrics
from stream_data import write_source

pytestmark = [pytest.mark.ray, pytest.mark.slow]
HERE = Path(__file__).resolve().parent


def test_every_image_once_per_epoch_across_workers_from_disk_and_s3(tmp_path):
    """Fails if the split hands a row to two workers, drops rows, or S3 streams differently."""
    src = write_source(tmp_path / "pq", train=320, test=40, files=3, row_group=40)
    s3 = cluster_box.S3Endpoint(tmp_path)
    try:
        s3.create_bucket("data")
        pafs.copy_files(str(src), "data/pq", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3.filesystem())
        s3_uri = f"s3://data/pq?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
        env = {**os.environ, **s3.env, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(HERE)}
        proc = subprocess.run([sys.executable, str(HERE / "_stream_run.py"), str(tmp_path / "out"), str(src), s3_uri],
                              env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        s3.stop()
    keys = json.loads((tmp_path / "out" / "keys.json").read_text())
    for source in (str(src), s3_uri):
        per_rank = keys[source]
        for epoch in (0, 1):
            seen = per_rank["0"][epoch] + per_rank["1"][epoch]
            assert len(per_rank["0"][epoch]) == len(per_rank["1"][epoch]) == 160  # fixed batch: equal shares
            assert sorted(seen) == list(range(320)), f"{source} epoch {epoch}: missing or repeated images"
        assert per_rank["0"][0] != per_rank["0"][1]  # a new order every epoch
    assert sorted(keys[s3_uri]["0"][0] + keys[s3_uri]["1"][0]) == sorted(keys[str(src)]["0"][0] + keys[str(src)]["1"][0])


def test_streamed_pretraining_learns_counts_corrupt_images_and_survives_a_killed_worker(ray_local, tmp_path,
                                                                                      monkeypatch):
    """With data.decode=device (Ray Data reads the bytes, each worker decodes them: on its CPU here).
    Fails if the stream's batches are not the images (no learning), a corrupt row is lost
    without being counted, or a killed worker ends the run instead of resuming from its checkpoint;
    if the driver reads a shard's footer more than once, or a resume streams rows the run did not
    start with (a shard added to the source since)."""
    import jigclu.data.stream as stream
    from jigclu.launch import prepare
    from jigclu.ray_train import launch_ray

    src = write_source(tmp_path / "pq", train=384, test=64, files=2, row_group=64, corrupt=(17,))
    cfg = load_config(None, [
        f"data.dataset=parquet:{src}", "data.loader=ray_data", "data.decode=device", "data.batch_size=32", "model.width=8",
        "jigsaw.crop_size=32", "train.progress=false", "optim.lr=0.2", "train.epochs=4", "scaling.workers=2",
        "scaling.max_failures=2", "monitor.train_limit=200", "monitor.test_limit=64", f"output_dir={tmp_path}",
        "name=streamed"])
    marker = tmp_path / "killed"
    footers, read_footer = [], stream._footer
    monkeypatch.setattr(stream, "_footer", lambda fs, path: footers.append(path) or read_footer(fs, path))
    summary = launch_ray("pretrain", prepare("pretrain", cfg), progress=False, callbacks=[KillOnce(1, 1, str(marker))])
    assert sorted(footers) == sorted(str(f) for f in src.glob("*.parquet")), footers  # once each, on the driver
    assert marker.exists(), "the fault was never injected"
    metrics = read_metrics(tmp_path / "streamed")
    epochs = [m["epoch"] for m in metrics]
    assert sorted(set(epochs)) == [0, 1, 2, 3] and summary["last"]["epoch"] == 3, epochs
    # resumed from the checkpoint (epoch 1 was reported before the kill), not from scratch: at most the
    # epoch in flight is trained again
    assert epochs == sorted(epochs) and len(epochs) - len(set(epochs)) <= 1, epochs
    kill_time = float(marker.read_text())
    assert [m["epoch"] for m in metrics if m["time"] < kill_time] == [0, 1], epochs
    assert next(m["epoch"] for m in metrics if m["time"] > kill_time) in (1, 2), epochs
    assert all(m["corrupt_skipped"] == 1 for m in metrics)  # the one bad row, every epoch, on whichever worker
    assert all(m["images_seen"] == (383 // 2 // 16) * 32 for m in metrics)  # equal shares of the 383 good rows
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert metrics[-1]["knn_top1"] > 100 / 4 + 10  # the monitor scores real features on the test split
    assert (tmp_path / "streamed" / "config.yaml").read_text().count("loader: ray_data") == 1

    # the source grows (a new shard of 64 training rows); a resume streams the rows the run started with
    plan = (tmp_path / "streamed" / "stream_plan.json").read_text()
    extra = write_source(tmp_path / "extra", train=64, test=0, files=1, row_group=64, seed=1)
    (extra / "part-00000.parquet").rename(src / "part-00009.parquet")
    stream._PLANS.clear()  # as in a new driver process
    resumed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 5})})
    launch_ray("pretrain", prepare("pretrain", resumed), resume=True, progress=False)
    metrics = read_metrics(tmp_path / "streamed")
    assert metrics[-1]["epoch"] == 4 and metrics[-1]["images_seen"] == (383 // 2 // 16) * 32, metrics[-1]
    assert (tmp_path / "streamed" / "stream_plan.json").read_text() == plan


def test_the_streams_scheduling_loop_waits_while_nothing_moves(ray_local, tmp_path, monkeypatch):
    """Fails if the stream's dataset does not carry :class:`IdleWait` to the executor that runs it,
    or if it never waits while a slow consumer leaves that executor nothing to do (Ray Data's loop
    then spins, a core of the SplitCoordinator: benchmarks/RESULTS.md "Streaming data")."""
    import time

    import jigclu.ray_data_loop as loop
    from jigclu.data.stream import plan_stream
    from jigclu.ray_data import stream_dataset

    src = write_source(tmp_path / "pq", train=640, test=0, files=2, row_group=32)
    ds = stream_dataset(plan_stream(str(src)), seed=0, decode_cpus=0.5)
    assert loop.IdleWait in ds.context.custom_execution_callback_classes
    waits = []
    monkeypatch.setattr(loop, "_wait", lambda: waits.append(time.sleep(loop.IDLE_WAIT_S)))
    rows = 0
    for batch in ds.iter_batches(batch_size=32, batch_format="numpy"):  # the executor runs in this process
        rows += len(batch["label"])
        time.sleep(0.2)  # a slow trainer: the decode is done long before it asks again
        if rows >= 320:
            break
    assert rows >= 320 and len(waits) >= 10, len(waits)


def test_raw_rows_cross_ray_data_as_bytes(ray_local, tmp_path):
    """data.decode=device: the rows Ray Data hands over are each image's bytes (not decoded, not
    re-encoded by the block format), and decoding them gives the images the decode tasks give."""
    import numpy as np

    from jigclu.data.decode import DecodeUnits
    from jigclu.data.device_decode import DeviceDecoder
    from jigclu.data.stream import plan_stream
    from jigclu.ray_data import stream_dataset

    src = write_source(tmp_path / "pq", train=120, test=0, files=1, row_group=40, corrupt=(3,))
    plan = plan_stream(str(src))
    decoder = DeviceDecoder(plan.channels, plan.image_size)
    got = [decoder(b) for b in stream_dataset(plan, seed=0, raw=True).iter_batches(batch_size=None, batch_format="numpy")]
    want = [c for i in range(len(plan.units)) for c in DecodeUnits(plan).decode_unit(i)]
    assert all(isinstance(b, bytes) for b in np.concatenate([c["data"] for c in
               stream_dataset(plan, seed=0, raw=True).iter_batches(batch_size=None, batch_format="numpy")]))
    by_key = {int(k): img for c in want for k, img, ok in zip(c["key"], c["image"], c["ok"]) if ok}
    keys = [int(k) for c in got for k, ok in zip(c["key"], c["ok"]) if ok]
    assert sorted(keys) == sorted(by_key) == [k for k in range(120) if k != 3]
    for c in got:
        for k, img, ok in zip(c["key"], c["image"], c["ok"]):
            assert not ok or np.array_equal(img.numpy(), by_key[int(k)])
