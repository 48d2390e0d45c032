"""Sweep efficiency: a small Ray Tune + Optuna sweep vs running its trials one by one in-process.

``tune/`` (the sweep) is imported lazily: while it is missing or its API differs from what
this script expects, the section says *pending* and why, and nothing fails.

What is measured, per round (a fresh sweep each round):

- **sweep wall**: ``tune.sweep.run_sweep`` of ``tune/configs/pretrain_digits.yaml`` shrunk to
  4 trials of 2 epochs x 4 steps (width 8, small kNN monitor), 2 concurrent trials, no early
  stopping, on a Ray started once beforehand;
- **sequential in-process**: the very trial configurations the sweep ran (read back from each
  trial's ``config.yaml``), run one after the other through ``jigclu.launch.launch`` with
  ``scaling.workers=0`` in this process: the cost of the same work with no Tune, no actors;
- the sweep twice, its Tune actors started afresh for every trial (``reuse_actors=false``, as before
  jigclu reused them) and reused (``reuse_actors=true``, the default): the same configs (the sampler is
  seeded), run side by side in each round;
- **sweep / sequential**: below 1 the sweep's concurrency wins more than its overhead costs (on
  2 cores with 2 concurrent trials the ideal is 0.5); **overhead per trial** estimates the
  time a trial slot spends on anything but the trial's work: ``(concurrency x sweep wall -
  sequential) / trials``.

    python -m benchmarks.speed.sweep_efficiency        # writes ## Sweep efficiency
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import common

SWEEP_FILE = common.REPO_ROOT / "tune" / "configs" / "pretrain_digits.yaml"
TRIALS, CONCURRENT, EPOCHS, STEPS = 8, 2, 2, 4
REUSE = (False, True)


def overrides(name: str, output_dir: str, reuse: bool) -> list[str]:
    return [f"name={name}", f"output_dir={output_dir}", f"num_samples={TRIALS}", f"max_concurrent={CONCURRENT}",
            f"reuse_actors={str(reuse).lower()}", "searcher=random",
            "scheduler.type=none", "time_budget_s=null", "test_top_k=0", f"config.train.epochs={EPOCHS}",
            f"config.train.steps_per_epoch={STEPS}", "config.train.progress=false", "config.model.width=8",
            "config.monitor.train_limit=500", "config.monitor.test_limit=200"]


def measure(rounds: int) -> dict[str, Any]:
    """Raises on any mismatch with the sweep API; the caller reports that as pending."""
    import torch
    from tune.space import load_sweep  # lazily: tune/ is being written
    from tune.sweep import run_sweep

    from jigclu.config import RunConfig, read_yaml
    from jigclu.launch import launch
    from jigclu.ray_session import init_ray

    torch.set_num_threads(1)  # a trial gets one CPU; so does the in-process baseline
    init_ray(num_cpus=4)
    out: dict[Any, list[float]] = {"sequential": [], **{reuse: [] for reuse in REUSE}}
    with tempfile.TemporaryDirectory(prefix="jigclu-bench-sweep-") as tmp:
        for r in range(rounds):
            for reuse in REUSE:
                common.progress(f"sweep: round {r + 1}/{rounds}: sweep of {TRIALS} trials, reuse_actors={reuse}")
                sweep = load_sweep(SWEEP_FILE, overrides(f"bench-{r}-{reuse}", tmp, reuse))
                summary = run_sweep(sweep, progress=False, num_cpus=4)
                out[reuse].append(float(summary["wall_s"]))
            sweep_dir = Path(summary["sweep_dir"])
            configs = sorted(sweep_dir.glob("trial-*/config.yaml"))
            if len(configs) != TRIALS:
                raise RuntimeError(f"found {len(configs)} trial configs in the sweep directory, expected {TRIALS}")
            common.progress(f"sweep: round {r + 1}/{rounds}: the same {TRIALS} trials in-process")
            start = time.perf_counter()
            for i, path in enumerate(configs):
                cfg = RunConfig.model_validate(read_yaml(path))
                cfg.name, cfg.output_dir = f"seq-{r}-{i}", str(Path(tmp) / "sequential")
                cfg.scaling.workers = 0
                cfg.train.progress = False
                launch("pretrain", cfg, progress=False)
            out["sequential"].append(time.perf_counter() - start)
    return out


def section_pending(reason: str, info: dict[str, str]) -> str:
    return "\n".join([
        f"**pending**: {common.scrub(reason)}",
        "",
        "Once `tune.sweep` is in place this section reports a small sweep's wall time against running "
        "the same trials one by one in-process, and the per-trial overhead (see "
        "`benchmarks/speed/sweep_efficiency.py`).",
        "",
        common.info_block(info),
    ])


def section(res: dict[Any, Any], info: dict[str, str]) -> str:
    rows = []
    for reuse in REUSE:
        ratio = common.Ratio.of([a / b for a, b in zip(res[reuse], res["sequential"])])
        overhead = statistics.median((CONCURRENT * a - b) / TRIALS for a, b in zip(res[reuse], res["sequential"]))
        rows.append([f"{TRIALS} trials x {EPOCHS} epochs x {STEPS} steps, {CONCURRENT} concurrent",
                     "reused (default)" if reuse else "a new actor per trial",
                     common.fmt_s(statistics.median(res[reuse])), common.fmt_s(statistics.median(res["sequential"])),
                     str(ratio), f"{overhead:.1f} s"])
    return "\n".join([
        "A small sweep (`tune/configs/pretrain_digits.yaml` shrunk: digits 32 px, ResNet-18-small width 8, "
        f"{TRIALS} trials of {EPOCHS} epochs x {STEPS} steps, {CONCURRENT} concurrent, random search, no early "
        "stopping) vs the same trial configurations run one after the other in-process, with Tune's actors started "
        "for every trial and reused (`reuse_actors`), side by side in each round. Ratio: median of per-round ratios "
        "(min-max); overhead per trial = (concurrency x sweep wall - sequential) / trials: it includes the "
        "sweep's own start and end, spread over its trials.",
        "",
        common.markdown_table(["sweep", "Tune actors", "sweep wall", "sequential in-process", "sweep / sequential",
                               "overhead per trial"], rows),
        "",
        f"Rounds: {len(res['sequential'])} (each: both sweeps, then their trials in-process).",
        "",
        common.info_block(info),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Ray Tune sweep vs sequential in-process trials")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    info = common.machine_info("1 per trial and for the in-process baseline")
    try:
        import tune.sweep  # noqa: F401
    except Exception as exc:  # missing, half-written, or failing at import
        body = section_pending(f"`tune.sweep` does not import yet ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}).", info)
        common.progress("sweep: tune.sweep not importable: pending")
    else:
        try:
            res = measure(args.rounds)
            common.finish_info(info)
        except Exception as exc:
            body = section_pending(f"the sweep measurement is not wired to `tune.sweep` yet "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).", info)
            common.progress(f"sweep: measurement failed, pending ({type(exc).__name__}: {exc})")
        else:
            body = section(res, info)
            common.print_table("Sweep efficiency", ["Tune actors", "sweep wall (median)", "sequential (median)"],
                               [["reused" if reuse else "new per trial", common.fmt_s(statistics.median(res[reuse])),
                                 common.fmt_s(statistics.median(res["sequential"]))] for reuse in REUSE])
    if not args.no_write:
        common.write_section("Sweep efficiency", body)


if __name__ == "__main__":
    main()
