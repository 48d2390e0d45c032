"""Run by tests/test_elastic.py in its own process: an elastic run on a fake 3-node cluster.

Head with 0 CPUs plus three 1-CPU nodes; ``scaling.workers=[1, 3]``; once two epochs are
reported, one node is removed. Prints one JSON line with the metrics it saw. With a Parquet
directory as second argument the run streams it through Ray Data (``data.loader=ray_data``).
"""

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from jigclu.config import load_config
from jigclu.runs import read_metrics
from jigclu.ray_train import launch_ray

out = Path(sys.argv[1])
# an optional parquet source: stream it through Ray Data, leaving each node a quarter CPU for decoding
stream = [f"data.dataset=parquet:{sys.argv[2]}", "data.loader=ray_data", "scaling.cpus_per_worker=0.75",
          "data.decode_cpus=0.25", "data.image_size=null"] if len(sys.argv) > 2 else []
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)

cfg = load_config(None, [
    "data.dataset=digits", "data.image_size=32", "data.batch_size=48", "model.width=8",
    "jigsaw.crop_size=32", "train.progress=false", "monitor.knn=false", "optim.lr=0.2",
    "train.steps_per_epoch=6", "train.epochs=8", "scaling.workers=[1, 3]", "scaling.max_failures=3",
    f"output_dir={out}", "name=elastic", *stream])
removed = {}


def remove_a_node() -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        if len(read_metrics(out / "elastic")) >= 2:
            removed["at_epoch"] = read_metrics(out / "elastic")[-1]["epoch"]
            removed["time"] = time.time()
            cluster.remove_node(nodes[-1])
            return
        time.sleep(0.5)


thread = threading.Thread(target=remove_a_node, daemon=True)
thread.start()
summary = launch_ray("pretrain", cfg, progress=False, address=cluster.address)
thread.join(timeout=5)
metrics = read_metrics(out / "elastic")
print(json.dumps({"epochs": [m["epoch"] for m in metrics], "world": [m["world_size"] for m in metrics],
                  "times": [m["time"] for m in metrics],
                  "seen": [m.get("images_seen") for m in metrics],
                  "removed": removed, "last_epoch": summary["last"].get("epoch"),
                  "end": time.time()}))
ray.shutdown()
cluster.shutdown()
