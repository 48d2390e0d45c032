"""Run by tests/test_stream_ray.py in its own process (its own local Ray, started with the S3
endpoint's environment so Ray Data's tasks and the Train workers reach it): every source given
is streamed through Ray Data to 2 Ray Train workers for 2 epochs, each worker iterating its shard
with jigclu's StreamLoader. Writes ``{source: {rank: [keys of epoch 0, keys of epoch 1]}}`` as JSON.
"""

import json
import os
import sys
from pathlib import Path

import ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jigclu.data.stream import STREAM_NAME, plan_stream
from jigclu.ray_data import quiet_data_context, stream_dataset
from jigclu.ray_session import init_ray

out, sources = Path(sys.argv[1]), sys.argv[2:]
BATCH = 16  # per worker


def train_fn(config: dict) -> None:
    from jigclu import dist
    from jigclu.data.stream_loader import StreamLoader

    rank = ray.train.get_context().get_world_rank()
    loader = StreamLoader(ray.train.get_dataset_shard(STREAM_NAME), BATCH, seed=0, rank=rank, shuffle_buffer=64,
                          agree=dist.all_agree)
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen.append([int(k) for batch in loader for k in batch[2]])
    Path(config["dir"], f"rank{rank}.json").write_text(json.dumps(seen))


init_ray(num_cpus=4)
quiet_data_context()
results = {}
for i, source in enumerate(sources):
    result_dir = out / f"source{i}"
    result_dir.mkdir(parents=True)
    trainer = TorchTrainer(train_fn, train_loop_config={"dir": str(result_dir)},
                           datasets={STREAM_NAME: stream_dataset(plan_stream(source), seed=0)},
                           scaling_config=ScalingConfig(num_workers=2),
                           run_config=RunConfig(name=f"stream{i}", storage_path=str(out / "ray")))
    trainer.fit()
    results[source] = {r: json.loads((result_dir / f"rank{r}.json").read_text()) for r in (0, 1)}
(out / "keys.json").write_text(json.dumps(results))
os._exit(0)  # skip Ray's slow interpreter-exit hooks; everything is written
