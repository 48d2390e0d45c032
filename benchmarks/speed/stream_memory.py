"""Streaming data: peak memory per Ray Train worker and throughput, in-memory reader vs Ray Data.

Two synthetic Parquet datasets, ~12k and ~120k JPEG images at 64 px (10 classes of noisy shapes,
generated on the fly from (seed, index) and written by ``jigclu.data.write_parquet``; cached
between runs), each trained by the same short ``jigclu pretrain`` run with 2 Ray Train workers and
``data.loader`` = ``memory`` (today's reader: every worker process holds every image's encoded
bytes) or ``ray_data`` (decoded in Ray Data tasks, streamed into the workers). Both loaders run the
same number of steps, alternately, size by size.

While a run goes, every ``RayTrainWorker`` process's RSS is sampled every 0.25 s (psutil); a run's
figure is the largest per-worker peak. Throughput is end-to-end training images per second: the
images of all epochs over the sum of their ``epoch_time_s`` (``metrics.jsonl``); wall is the whole
command (Ray start, data load, teardown).

Targets (from the issue): the Ray Data path's per-worker peak RSS grows <= 1.2x when the dataset
grows 10x, at >= 0.8x the in-memory path's training throughput.

    python -m benchmarks.speed.stream_memory            # writes ## Streaming data: memory per worker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import common
from benchmarks.speed.stream_report import (
    BATCH, CLASSES, COLUMNS, CPU_ROLES, LINEAR, LOADERS, MIB, OVERRIDES, PX, QUALITY, ROW_GROUP_ROWS, SAMPLE_S, SEED,
    SHARD_MB, SIZES, ratios, rows, section, title, verdicts,
)
from jigclu.data import ImageDataset

CACHE = Path(tempfile.gettempdir()) / "jigclu-bench-stream"
CACHE_VERSION = 1  # bump when the generator changes
# generation and run time on 2 cores (AMD EPYC), for the time estimate printed first
GEN_S_PER_IMAGE = 0.0007
RUN_START_S, STEP_S = 45.0, 0.5  # a run's fixed cost (Ray, workers, data plan or load) and per step


def task_overrides(task: str, epochs: int) -> list[str]:
    return [*OVERRIDES, f"train.epochs={epochs}"] if task == "pretrain" else [*LINEAR, f"eval.epochs={epochs}"]


# ---------------------------------------------------------------------------------------------
# The synthetic dataset


class NoisyShapes(ImageDataset):
    """``n`` RGB images of 10 classes of shapes (disc, square, triangle, stripes, ring, cross,
    diagonal stripes, checkerboard, two discs) in random colours, places and sizes, plus Gaussian
    noise; item ``i`` is made from ``(seed, i)`` when asked for, so nothing is held in memory."""

    def __init__(self, n: int, seed: int = SEED) -> None:
        super().__init__(name=f"noisy_shapes:{n}", split="train", classes=[f"shape{c}" for c in range(CLASSES)],
                         labels=torch.arange(n) % CLASSES, channels=3, image_size=(PX, PX))
        self.seed = seed
        self._yy, self._xx = np.mgrid[0:PX, 0:PX].astype(np.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        c = self._label_list[index]
        rng = np.random.default_rng((self.seed, index))
        bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        cy, cx = rng.uniform(0.3, 0.7, 2) * PX
        r = rng.uniform(0.15, 0.35) * PX
        yy, xx = self._yy, self._xx
        dy, dx = yy - cy, xx - cx
        d2, step = dy * dy + dx * dx, max(r / 3, 2.0)
        mask = [
            lambda: d2 < r * r,
            lambda: (abs(dy) < r) & (abs(dx) < r),
            lambda: (dy < r) & (abs(dx) < (dy + r) / 2),
            lambda: (yy // step) % 2 == 0,
            lambda: (xx // step) % 2 == 0,
            lambda: (d2 < r * r) & (d2 > (0.6 * r) ** 2),
            lambda: ((abs(dy) < r / 4) & (abs(dx) < r)) | ((abs(dx) < r / 4) & (abs(dy) < r)),
            lambda: ((yy + xx) // (1.5 * step)) % 2 == 0,
            lambda: ((yy // (1.5 * step)) + (xx // (1.5 * step))) % 2 == 0,
            lambda: ((dy - r / 2) ** 2 + dx * dx < (r / 2) ** 2) | ((dy + r / 2) ** 2 + dx * dx < (r / 2) ** 2),
        ][c]()
        img = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (PX, PX, 3))
        img = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(img)), c


def parquet_rows(path: Path) -> int | None:
    """Rows in the shards under ``path`` (from the footers), or None when there are none."""
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet"))
    if not files:
        return None
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def dataset(n: int, cache: Path) -> tuple[Path, float | None, bool]:
    """The Parquet directory of ``n`` images (generated unless cached), the seconds its generation
    took (kept beside it; None if unknown) and whether it came from the cache."""
    from jigclu.data import write_parquet

    path = cache / f"noisy_shapes-{n}-{PX}px-q{QUALITY}-v{CACHE_VERSION}"
    record = path.with_name(path.name + ".json")  # beside, not inside: a reader takes every file inside
    if parquet_rows(path) == n:
        try:
            return path, float(json.loads(record.read_text())["seconds"]), True
        except (OSError, ValueError, KeyError):
            return path, None, True
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    common.progress(f"generating {n:,} images ({PX} px, JPEG q{QUALITY}) into {path} ...")
    start = time.perf_counter()
    write_parquet(NoisyShapes(n), str(path), image_format="jpeg", quality=QUALITY, shard_mb=SHARD_MB,
                  row_group_rows=ROW_GROUP_ROWS)
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"images": n, "seconds": seconds, "cpus": os.cpu_count()}))
    common.progress(f"generated {n:,} images in {seconds:.0f} s ({n / seconds:,.0f} img/s)")
    return path, seconds, False


def dataset_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.parquet"))


# ---------------------------------------------------------------------------------------------
# One run, its workers' memory sampled from outside


ROLES = (  # (role, what a process's title contains at some sample), first match wins
    ("train", "RayTrainWorker"),
    ("decode", "DecodeUnits"),  # ray::MapBatches(DecodeUnits): Ray Data decode tasks
    ("coordinator", "SplitCoordinator"),  # Ray Data's streaming_split executor actor
)


class ProcessSampler(threading.Thread):
    """Polls the process tree under ``root`` every ``SAMPLE_S``: each process's peak RSS and CPU
    time, and its role from the titles it had (:data:`ROLES`; ``other`` when none matched). A
    process's peak counts over all its titles (``ray::IDLE`` included: a pool worker keeps what a
    task left behind); CPU time is the last sample's (a process that ends loses < ``SAMPLE_S``)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.roles: dict[int, set[str]] = {}
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            try:
                procs = root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    title = " ".join(p.cmdline())
                    rss = p.memory_info().rss
                    times = p.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                self.cpu[p.pid] = times.user + times.system
                roles = self.roles.setdefault(p.pid, set())
                roles.update(role for role, marker in ROLES if marker in title)
            self.samples += 1
            self._halt.wait(SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def role(self, pid: int) -> str:
        return next((role for role, _ in ROLES if role in self.roles.get(pid, ())), "other")

    def pids(self, role: str) -> list[int]:
        return [pid for pid in self.peak if self.role(pid) == role]

    def peaks(self, role: str) -> list[int]:
        return sorted(self.peak[pid] for pid in self.pids(role))

    def cpu_s(self, role: str) -> float:
        return sum(self.cpu.get(pid, 0.0) for pid in self.pids(role))


def read_epochs(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_once(data: Path, loader: str, steps: int, epochs: int, out: Path, name: str, timeout: float,
             task: str = "pretrain") -> dict[str, Any]:
    """One ``jigclu <task>`` subprocess; its workers' peak RSS, throughput and wall time."""
    jigclu = Path(sys.executable).with_name("jigclu")
    config = ["--config", str(common.REPO_ROOT / "configs" / "digits.yaml")] if task == "pretrain" else []
    cmd = [str(jigclu), task, *config,
           f"data.dataset=parquet:{data}", f"data.loader={loader}", *task_overrides(task, epochs),
           f"train.steps_per_epoch={steps}", f"output_dir={out}", f"name={name}"]
    log = out / f"{name}.log"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "wb") as sink:
        # its own session: on a timeout the whole tree (Ray included) is ended through its group
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=common.REPO_ROOT,
                                start_new_session=True)
        sampler = ProcessSampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
        finally:
            sampler.stop()
    wall = time.perf_counter() - start
    epochs_seen = read_epochs(out / name)
    result: dict[str, Any] = {"loader": loader, "rc": rc, "wall": wall, "log": log, "epochs": epochs_seen,
                              "samples": sampler.samples, "worker_peaks": sampler.peaks("train"),
                              "peak_rss": max(sampler.peaks("train"), default=0),
                              "decode_peak": max(sampler.peaks("decode"), default=0),
                              "decode_workers": len(sampler.pids("decode")),
                              "cpu": {role: sampler.cpu_s(role) for role in CPU_ROLES}}
    if rc != 0 or len(epochs_seen) != epochs:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        why = "timed out" if rc is None else f"exit code {rc}"
        result["error"] = f"{why}, {len(epochs_seen)}/{epochs} epochs; log tail:\n" + "\n".join(tail)
        return result
    steps_done, images, seconds, prev = 0, 0, 0.0, 0
    for e in epochs_seen:
        images += (e["step"] - prev) * BATCH
        steps_done += e["step"] - prev
        prev = e["step"]
        seconds += e["epoch_time_s"]
    later = epochs_seen[1:]  # after the first epoch: the stream (or the loader) has started
    later_s = sum(e["epoch_time_s"] for e in later)
    later_images = (epochs_seen[-1]["step"] - epochs_seen[0]["step"]) * BATCH
    result.update(images=images, steps=steps_done, train_s=seconds, images_per_s=images / seconds,
                  later_images_per_s=later_images / later_s if later and later_s > 0 else None,
                  images_seen=[e.get("images_seen") for e in epochs_seen],
                  world_size=epochs_seen[-1].get("world_size"))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="peak RSS per Ray Train worker: in-memory reader vs Ray Data")
    parser.add_argument("--task", choices=("pretrain", "linear"), default="pretrain",
                        help="the trainer run (its own section of RESULTS.md)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--steps", type=int, default=50, help="steps per epoch (both loaders)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the generated datasets are kept")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a run is ended")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    sizes = tuple(sorted(args.sizes))
    missing = [n for n in sizes if parquet_rows(args.cache / f"noisy_shapes-{n}-{PX}px-q{QUALITY}-v{CACHE_VERSION}") != n]
    gen_est = sum(missing) * GEN_S_PER_IMAGE
    runs = len(sizes) * len(LOADERS) * args.rounds
    per_run = RUN_START_S + STEP_S * args.steps * args.epochs
    est = gen_est + runs * per_run
    print(f"stream_memory: expect about {est / 60:.0f} min on 2 cores ("
          + (f"generating {', '.join(f'{n:,}' for n in missing)} images ~{gen_est / 60:.1f} min, " if missing
             else "datasets cached, ")
          + f"{runs} {args.task} runs of ~{per_run / 60:.1f} min; longer on a busy machine)", flush=True)
    t_total = time.perf_counter()
    info = common.machine_info("1 per Ray Train worker (Ray's default for 1-CPU workers)")
    info["cpu capability"] = torch.backends.cpu.get_cpu_capability()

    paths, gen_s, cached = {}, {}, {}
    for n in sizes:
        paths[n], gen_s[n], cached[n] = dataset(n, args.cache)
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="jigclu-bench-stream-") as tmp:
        counter = 0
        failures: list[dict[str, Any]] = []
        for r in range(args.rounds):
            for n in sizes:
                order = LOADERS if (r + sizes.index(n)) % 2 == 0 else LOADERS[::-1]
                for loader in order:
                    for attempt in (1, 2):  # one retry: a failed run is reported, not hidden
                        counter += 1
                        res = run_once(paths[n], loader, args.steps, args.epochs, Path(tmp), f"run{counter:02d}",
                                       args.timeout, args.task)
                        if "error" not in res:
                            break
                        kept = args.cache / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{loader}-{n}.log"
                        kept.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(res["log"], kept)
                        failures.append({"loader": loader, "n": n, "attempt": attempt, "wall": res["wall"],
                                         "error": res["error"], "log": str(kept)})
                        common.progress(f"{loader} at {n:,} images FAILED (attempt {attempt}) after "
                                        f"{res['wall']:.0f} s; log kept at {kept}: {res['error']}")
                    results.setdefault((loader, n), []).append(res)
                    if "error" not in res:
                        cpu = " / ".join(f"{role} {res['cpu'][role]:.0f}" for role in CPU_ROLES)
                        common.progress(
                            f"{loader} at {n:,} images: peak RSS {res['peak_rss'] / MIB:,.0f} MiB "
                            f"(workers {', '.join(f'{p / MIB:,.0f}' for p in res['worker_peaks'])}; "
                            f"{res['samples']} samples), {res['images_per_s']:,.0f} img/s, wall {res['wall']:.0f} s, "
                            f"decode workers {res['decode_workers']}, peak {res['decode_peak'] / MIB:,.0f} MiB, "
                            f"CPU s {cpu}, "
                            f"epoch s {[round(e['epoch_time_s'], 1) for e in res['epochs']]}, "
                            f"images seen {res['images_seen']}")
    res_all = {"task": args.task, "sizes": sizes, "results": results, "ratios": ratios(results, sizes), "steps": args.steps,
               "epochs": args.epochs, "rounds": args.rounds, "gen_s": gen_s, "cached": cached,
               "failures": failures,
               "bytes": {n: dataset_bytes(paths[n]) for n in sizes},
               "shards": {n: len(list(paths[n].glob("*.parquet"))) for n in sizes}}
    total = time.perf_counter() - t_total
    info["total time"] = common.fmt_s(total)
    common.print_table(f"{title(args.task)} ({args.epochs} x {args.steps} steps, 2 workers; total {total / 60:.1f} min)",
                       COLUMNS, rows(results, sizes))
    for line in verdicts(res_all["ratios"], sizes):
        print(line.replace("**", ""))
    if not args.no_write:
        common.finish_info(info)
        common.write_section(title(args.task), section(res_all, info))
    return res_all


if __name__ == "__main__":
    main()
