"""Global vs local montage: per-step cost with 2 CPU workers (gloo), interleaved in one run.

Two processes form a gloo group, as Ray Train's workers do. Each round times one full
training step (``make_montages`` + ``jigclu_losses`` + backward with gradient all-reduce as DDP
does it + SGD) with ``montage_scope: global`` (patches of both workers gathered, one shared
permutation, per-patch features all-gathered with gradient) and with ``local`` (each worker
jigsaws its own images), alternating the order. The ratio global/local is the cost of the
reference's cross-worker montage on this machine.

    python -m benchmarks.speed.montage_scope [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from benchmarks.harness import common
from jigclu.augment import PatchAugment
from jigclu.losses import JigCluLoss
from jigclu.methods.jigclu import jigclu_losses, make_montages
from jigclu.models import JigCluModel

WORLD, GLOBAL_BATCH, CROP, GRID = 2, 128, 32, 2


def _step(model, opt, augment, criterion, images, scope: str, seed: int) -> float:
    model.gather_features = scope == "global"
    t0 = time.perf_counter()
    montages, perm, total = make_montages(images, augment, GRID, 0.3, seed, scope)
    out = jigclu_losses(model, criterion, montages, perm, total)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    for p in model.parameters():  # what DDP's reducer does: average gradients over workers
        torch_dist.all_reduce(p.grad)
        p.grad /= WORLD
    opt.step()
    return time.perf_counter() - t0


def _worker(rank: int, port: int, rounds: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = JigCluModel("resnet18_small", width=16, grid=GRID)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    augment, criterion = PatchAugment(CROP // GRID), JigCluLoss()
    gen = torch.Generator().manual_seed(rank)
    images = torch.randint(0, 256, (GLOBAL_BATCH // WORLD, 1, 28, 28), dtype=torch.uint8, generator=gen)
    times: dict[str, list[float]] = {"global": [], "local": []}
    for r in range(rounds + 1):
        order = ("global", "local") if r % 2 == 0 else ("local", "global")
        for scope in order:
            torch_dist.barrier()
            elapsed = torch.tensor(_step(model, opt, augment, criterion, images, scope, seed=r))
            torch_dist.all_reduce(elapsed, op=torch_dist.ReduceOp.MAX)  # a step ends when both do
            if r > 0:  # round 0 is warm-up
                times[scope].append(elapsed.item())
    if rank == 0:
        queue.put(times)
    torch_dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    info = common.machine_info(threads="1 per worker, 2 workers")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, args.rounds, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    times = queue.get(timeout=1800)
    for p in procs:
        p.join()
    ratios = [g / l for g, l in zip(times["global"], times["local"])]
    g_ms, l_ms = statistics.median(times["global"]) * 1e3, statistics.median(times["local"]) * 1e3
    ratio = statistics.median(ratios)
    rows = [[f"resnet18_small w16, {CROP} px montages, m={GRID}, global batch {GLOBAL_BATCH} on {WORLD} gloo "
             f"workers", f"{g_ms:,.0f}", f"{l_ms:,.0f}", f"{ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f})"]]
    columns = ["setting", "global ms/step", "local ms/step", "global/local"]
    common.print_table("Global vs local montage", columns, rows)
    body = ("Per-step cost of the global montage (patches of all workers gathered, one shared permutation, "
            "per-patch features all-gathered with gradient) relative to local montages (each worker its own "
            "images), 2 CPU workers in a gloo group, full training step including the DDP-style gradient "
            f"all-reduce; median of {len(ratios)} interleaved rounds (min-max).\n\n"
            + common.markdown_table(columns, rows) + "\n\n" + common.info_block(common.finish_info(info)))
    common.write_section("Global vs local montage", body)


if __name__ == "__main__":
    main()
