"""Ray overhead: the same short pretraining run in-process and under Ray Train (1 and 2 workers).

One tiny config (digits at 32 px, ResNet-18-small width 8, batch 64, 4 steps per epoch,
N epochs, no kNN monitor) runs through ``jigclu.launch.launch("pretrain", cfg)`` with
``scaling.workers`` = 0 (in-process), 1 and 2 (Ray Train, one CPU each), plus one variant with
Ray Train's controller polling its workers every 0.25 s instead of 2 s. Rounds are interleaved
(one run of each per round, rotating order); Ray is started once, before the rounds, and its own
start time (``import ray`` and ``ray.init``) is reported separately.

Each run's wall time is split with the per-epoch records the run writes (``metrics.jsonl``:
end-of-epoch time and epoch duration):

- *start-up*: launch -> start of the first epoch (data, model, and under Ray: controller,
  placement group, worker processes, imports, ``torch.distributed`` set-up);
- *training*: start of the first epoch -> end of the last (epochs, per-epoch checkpoints);
- *teardown*: end of the last epoch -> ``launch`` returns (last checkpoint, worker shutdown,
  result collection).

    python -m benchmarks.speed.ray_overhead             # writes ## Ray overhead
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")

from benchmarks.harness import common  # noqa: E402  (after the environment above)

FAST_POLL_S = "0.25"  # jigclu's default (jigclu/ray_session.py)
RAY_POLL_S = "2"  # Ray Train's own default
MODES = {  # name -> (scaling.workers, extra environment for the run)
    "in-process": (0, {}),
    "Ray Train, 1 worker": (1, {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": RAY_POLL_S}),
    "Ray Train, 2 workers": (2, {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": RAY_POLL_S}),
    f"Ray Train, 1 worker, {FAST_POLL_S} s poll": (1, {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": FAST_POLL_S}),
}


def config(name: str, output_dir: str, workers: int, epochs: int) -> Any:
    from jigclu.config import RunConfig

    return RunConfig.model_validate({
        "name": name, "output_dir": output_dir, "seed": 0, "device": "cpu",
        "data": {"dataset": "digits", "image_size": 32, "batch_size": 64},
        "model": {"arch": "resnet18_small", "width": 8, "grid": 2},
        "jigsaw": {"crop_size": 32},
        "train": {"epochs": epochs, "steps_per_epoch": 4, "progress": False},
        "monitor": {"knn": False},
        "scaling": {"workers": workers, "cpus_per_worker": 1},
    })


def read_epochs(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_once(mode: str, output_dir: str, index: int, epochs: int) -> dict[str, float]:
    """One run of ``mode``; returns its wall time and the start-up/training/teardown split."""
    from jigclu.launch import launch

    workers, env = MODES[mode]
    name = f"bench-{index:03d}"
    cfg = config(name, output_dir, workers, epochs)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        start = time.time()
        launch("pretrain", cfg, progress=False)
        end = time.time()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    epochs_seen = read_epochs(Path(output_dir) / name)
    if len(epochs_seen) != epochs:
        raise RuntimeError(f"{mode}: expected {epochs} epoch records, found {len(epochs_seen)}")
    first_start = epochs_seen[0]["time"] - epochs_seen[0]["epoch_time_s"]
    return {"wall": end - start, "startup": first_start - start,
            "training": epochs_seen[-1]["time"] - first_start, "teardown": end - epochs_seen[-1]["time"],
            "epoch_s": statistics.median(e["epoch_time_s"] for e in epochs_seen)}


def measure(rounds: int, epochs: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # Ray gives each 1-CPU worker one thread; the in-process run the same
    t0 = time.perf_counter()
    import jigclu.ray_session as ray_session  # starts Ray; imports it (what this times)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    started = ray_session.init_ray(num_cpus=4)
    init_s = time.perf_counter() - t0
    common.progress(f"ray: import {import_s:.1f} s, init {init_s:.1f} s (started here: {started})")
    parts: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
    counter = iter(range(10 ** 6))
    with tempfile.TemporaryDirectory(prefix="jigclu-bench-ray-") as tmp:
        # one untimed in-process run first, so the driver's lazy imports (trainer, dataset
        # readers) are not billed to whichever mode happens to run first; worker processes
        # import everything afresh on every run, and that is part of what is measured
        run_once("in-process", tmp, next(counter), 1)
        def contender(mode: str) -> Any:
            def run() -> None:
                for key, value in run_once(mode, tmp, next(counter), epochs).items():
                    parts[mode].setdefault(key, []).append(value)
            return run

        def done(r: int) -> None:
            common.progress(f"ray: round {r + 1}/{rounds} done")

        # warmup=0: every run pays its own start-up, which is what is measured; the first round
        # still warms the OS caches for all modes alike thanks to the rotating order
        timings = common.interleaved({m: contender(m) for m in MODES}, rounds=rounds, warmup=0, on_round=done)
    if started:
        ray_session.ray.shutdown()
    ratios = {m: timings.ratio(m, "in-process") for m in MODES}
    extra = {m: common.Ratio.of([a - b for a, b in zip(parts[m]["startup"], parts["in-process"]["startup"])])
             for m in MODES}
    return {"import_s": import_s, "init_s": init_s, "started": started, "rounds": timings.rounds,
            "epochs": epochs, "parts": parts, "ratios": ratios, "extra_startup": extra}


COLUMNS = ["run", "wall", "start-up", "training", "teardown", "epoch", "wall / in-process",
           "extra start-up vs in-process"]


def rows(res: dict[str, Any]) -> list[list[str]]:
    out = []
    for mode in MODES:
        p = {k: statistics.median(v) for k, v in res["parts"][mode].items()}
        ratio, extra = res["ratios"][mode], res["extra_startup"][mode]
        out.append([mode, common.fmt_s(p["wall"]), common.fmt_s(p["startup"]), common.fmt_s(p["training"]),
                    common.fmt_s(p["teardown"]), f"{p['epoch_s']:.2f} s",
                    "1.00" if mode == "in-process" else str(ratio),
                    "-" if mode == "in-process" else f"{extra.median:+.1f} s"])
    return out


IDEAS = """Where the fixed cost goes and how to cut it:

- **Worker processes start cold.** Every `TorchTrainer.fit()` creates a controller actor, a
  placement group and fresh worker processes, each importing torch and jigclu and setting up
  `torch.distributed` (gloo) before the first step; the start-up column above is that bill, paid
  per run, and a sweep pays it per trial. Cheapest cut: run one-worker trials **in-process**
  inside the Tune trial (no nested Train job; the `in-process` row is that cost), as the sweep
  does for trials that need one worker.
- **Reuse actors.** In-process trials still start one Tune trial actor each (a fresh process
  that imports torch and jigclu); `tune.TuneConfig(reuse_actors=True)` (False by default in
  Ray 2.60) hands finished trials' actors to the next trial with the same resources. For
  multi-worker trials, a long-lived pool of warm worker actors (torch imported, process group
  kept) receiving one training function per trial would pay the start-up once per sweep; Ray
  Train V2 has no public API to keep a worker group between `fit()` calls, so that means a small
  actor pool of our own.
- **Poll faster.** The controller polls its workers every `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`
  (2 s by Ray's default, the rows above) and only then sees that they finished or reported, which
  adds up to a poll interval to start-up and to teardown; the 0.25 s row measures what a shorter
  interval saves, and jigclu now runs with it by default (`jigclu/ray_session.py`; set the
  variable to override it: Ray Train passes it on to the controller).
- **Start Ray once.** `import ray` plus `ray.init` is paid once per process (the line above the
  table); a test session or a sweep shares one instance, and a CLI run that connects to a
  running cluster (`--address`) skips `ray.init`'s local start entirely."""


def section(res: dict[str, Any], info: dict[str, str]) -> str:
    return "\n".join([
        f"Wall time of one {res['epochs']}-epoch pretraining run (digits at 32 px, ResNet-18-small width 8, "
        "batch 64, 4 steps per epoch, no kNN monitor, one torch thread per process) through "
        "`jigclu.launch.launch`, in-process (`scaling.workers=0`) and under Ray Train with 1 and 2 CPU "
        "workers; median over rounds (ratio: median of per-round ratios, min-max). Start-up: launch to "
        "first epoch; training: first epoch start to last epoch end; teardown: last epoch end to return.",
        "",
        f"Ray's own start, once per process: `import ray` {res['import_s']:.1f} s, `ray.init(num_cpus=4)` "
        f"{res['init_s']:.1f} s" + ("" if res["started"] else " (Ray was already running)") + ".",
        "",
        common.markdown_table(COLUMNS, rows(res)),
        "",
        f"Rounds: {res['rounds']} (interleaved, rotating order).",
        "",
        IDEAS,
        "",
        common.info_block(info),
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Ray Train overhead vs in-process pretraining")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    if "ray" in sys.modules:
        common.progress("note: ray was imported before this benchmark; import time will read low")
    info = common.machine_info("1 per process (in-process run and each Ray worker)")
    res = measure(args.rounds, args.epochs)
    common.print_table(f"Ray overhead ({args.epochs}-epoch tiny run; Ray import {res['import_s']:.1f} s, "
                       f"init {res['init_s']:.1f} s)", COLUMNS, rows(res))
    if not args.no_write:
        common.finish_info(info)
        common.write_section("Ray overhead", section(res, info))
    return res


if __name__ == "__main__":
    main()
