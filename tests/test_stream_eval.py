"""Scoring at scale: ``jigclu knn`` and a sweep's test score on a large ``parquet:`` source read it
through its plan, one row group at a time, keeping only features; a small source is read whole.
Fails if the streamed scores differ from the in-memory ones on the same rows, if a large source
is still loaded whole, or if a bank larger than the split is not one clear line."""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pytest
import torch

from benchmarks.harness import cluster_box
from jigclu import cli
from jigclu.config import load_config
from stream_data import CLASSES, write_source

TINY = ["data.image_size=32", "model.width=8", "jigsaw.crop_size=32", "monitor.k=10", "monitor.probe=true"]
STREAM = "data.stream_min_images=100"  # this 320-image source counts as large: it is streamed
MEMORY = "data.stream_min_images=1000000"


def _knn(capsys, *args: str) -> dict:
    code = cli.main(["knn", "--json", *TINY, *args])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    return json.loads(out[-1])


def _no_whole_split(*args, **kwargs):
    raise AssertionError("a large parquet: source was loaded whole")


def test_knn_streams_a_large_source_from_s3_with_the_scores_of_memory(tmp_path, capsys, monkeypatch):
    src = write_source(tmp_path / "pq", train=320, test=80, files=2, row_group=40)
    everything = ["monitor.train_limit=null", "monitor.test_limit=null"]
    in_memory = _knn(capsys, f"data.dataset=parquet:{src}", MEMORY, *everything)
    s3 = cluster_box.S3Endpoint(tmp_path)
    try:
        s3.create_bucket("data")
        pafs.copy_files(str(src), "data/pq", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=s3.filesystem())
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        uri = f"parquet:s3://data/pq?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
        with monkeypatch.context() as patch:
            patch.setattr("jigclu.data.load_dataset", _no_whole_split)
            streamed = _knn(capsys, f"data.dataset={uri}", STREAM, *everything)
            sampled = _knn(capsys, f"data.dataset={uri}", STREAM, "monitor.train_limit=120", "monitor.test_limit=40")
    finally:
        s3.stop()
    assert streamed["bank"] == in_memory["bank"] == 320 and streamed["queries"] == in_memory["queries"] == 80
    # the same rows, the same random-init backbone: the same features (batched differently), the same scores
    assert streamed["embed_std"] == pytest.approx(in_memory["embed_std"], rel=1e-4), (streamed, in_memory)
    for key in ("knn_top1", "knn_top5", "probe_top1"):
        assert streamed[key] == pytest.approx(in_memory[key], abs=0.5), (key, streamed, in_memory)
    assert streamed["knn_top1"] > 100 / CLASSES + 20
    assert sampled["bank"] == 120 and sampled["queries"] == 40  # bounded, seeded samples


def test_test_score_streams_the_test_split_of_a_large_source(tmp_path, monkeypatch):
    from jigclu.models import JigCluModel
    from jigclu.evaluation.scoring import test_score

    src = write_source(tmp_path / "pq", train=320, test=80, files=2, row_group=40)
    cfg = load_config(None, [f"data.dataset=parquet:{src}", STREAM, *TINY, "data.val_size=40",
                             "monitor.train_limit=200"])
    torch.manual_seed(0)
    state = JigCluModel(cfg.model.arch, cfg.model.width, cfg.model.grid, cfg.model.proj_dim).state_dict()
    monkeypatch.setattr("jigclu.data.load_dataset", _no_whole_split)
    scores = test_score(cfg, state)
    assert scores["queries"] == 80 and scores["bank"] == 200  # every test row; the bank from the run's training rows
    assert scores["knn_top1"] > 100 / CLASSES + 20


def test_a_bank_larger_than_the_split_is_one_line(tmp_path, capsys):
    src = write_source(tmp_path / "pq", train=320, test=80, files=2, row_group=40)
    code = cli.main(["knn", *TINY, f"data.dataset=parquet:{src}", STREAM, "monitor.train_limit=1000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "Traceback" not in err[0], err
    assert "monitor.train_limit=1000 is larger than the training split" in err[0] and "(320 rows)" in err[0], err
