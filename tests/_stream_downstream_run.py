"""Run by tests/test_stream_downstream.py in its own process (its own local Ray, started with the S3
endpoint's environment so Ray Data's tasks and the Train workers reach it): ``linear`` on 2 Ray
Train workers reading the local copy of the source into memory, then ``linear`` and ``semi``
streaming it from S3 (``data.loader=ray_data``); ``linear`` evaluates PRETRAINED's backbone, 2 epochs. Each
run's directory is ``OUT/<name>``.

    python _stream_downstream_run.py OUT LOCAL_SOURCE S3_URI PRETRAINED OVERRIDE...
"""

import os
import sys

from jigclu.config import load_config
from jigclu.launch import prepare
from jigclu.ray_session import init_ray
from jigclu.ray_train import launch_ray

out, local, s3_uri, pretrained, common = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
init_ray(num_cpus=4)
for task, name, source, loader in [("linear", "linear-memory", local, "memory"),
                                   ("linear", "linear-stream", s3_uri, "ray_data"),
                                   ("semi", "semi-stream", s3_uri, "ray_data")]:
    cfg = load_config(None, [*common, f"data.dataset=parquet:{source}", f"data.loader={loader}", f"output_dir={out}",
                             f"name={name}", "scaling.workers=2", "scaling.cpus_per_worker=1",
                             *([f"eval.pretrained={pretrained}", "eval.epochs=2"] if task == "linear" else [])])
    launch_ray(task, prepare(task, cfg), progress=False)
os._exit(0)  # skip Ray's slow interpreter-exit hooks; everything is written
