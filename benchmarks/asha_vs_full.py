"""Does early stopping on kNN find the configs a full sweep finds? ASHA vs FIFO on the same configs.

The same 12 configurations (Optuna's seeded RandomSampler draws them whatever the results, so
both sweeps get the very same ones) of the demo sweep (``tune/configs/pretrain_fashion.yaml``,
digits when Fashion-MNIST is not installed), shrunk so the whole benchmark takes ~10 minutes on
2 cores, run twice:

- **full**: FIFO, every trial to its last epoch;
- **ASHA**: stopping on the rung metric (kNN top-1 on the validation split) after each epoch.

Both select on the objective, a linear probe on frozen features scored on the validation split
(``objective: linear_probe``). Reported: trial-epochs used, the best final objective of each
(over the trials that ran every epoch), and, from the full sweep (where every trial has both),
Spearman's rank correlation between the kNN at the first rung and the final probe. Target:
ASHA's best within 1 point of the full sweep's best with <= 50% of its trial-epochs.

    python benchmarks/asha_vs_full.py          # writes ## ASHA vs full sweep
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import common  # noqa: E402  (sibling module; puts the repository on sys.path)

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
CONFIGS, EPOCHS, CONCURRENT = 12, 4, 2
TITLE = "ASHA vs full sweep"


def sweep_file() -> Path:
    name = "pretrain_fashion.yaml" if FASHION.exists() else "pretrain_digits.yaml"
    return common.REPO_ROOT / "tune" / "configs" / name


def overrides(name: str, output_dir: str, scheduler: str) -> list[str]:
    return [f"name={name}", f"output_dir={output_dir}", f"num_samples={CONFIGS}", f"max_concurrent={CONCURRENT}",
            "searcher=random", "objective=linear_probe", "time_budget_s=null", "test_top_k=0",
            f"scheduler.type={scheduler}", "scheduler.grace_period=1", "scheduler.reduction_factor=3",
            f"config.train.epochs={EPOCHS}", "config.train.progress=false", "config.data.limit=3200",
            "config.monitor.train_limit=2000", "config.monitor.test_limit=1000"]


def rows(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(scheduler: str, tmp: str) -> dict[str, Any]:
    from tune.space import load_sweep
    from tune.sweep import run_sweep

    common.progress(f"asha: {CONFIGS} configs x {EPOCHS} epochs with scheduler {scheduler}")
    sweep = load_sweep(sweep_file(), overrides(f"bench-{scheduler}", tmp, scheduler))
    summary = run_sweep(sweep, progress=False, num_cpus=CONCURRENT)
    trials = {}
    for trial in Path(summary["sweep_dir"]).glob("trial-*"):
        history = rows(trial)
        params = json.loads((trial / "sampled.json").read_text())
        trials[json.dumps(params, sort_keys=True)] = history
    full = [h for h in trials.values() if len(h) == EPOCHS]
    return {"wall_s": summary["wall_s"], "errored": summary["errored"], "trials": trials,
            "trial_epochs": sum(len(h) for h in trials.values()),
            "best": max((h[-1]["probe_top1"] for h in full), default=None), "completed": len(full)}


def seed_spread(tmp: str) -> dict[str, Any]:
    """The demo sweep's base config (as its trials run it: validation split, probe) pretrained with
    two seeds: how far apart two runs of one config land, to compare the sweep's margins with."""
    from jigclu.launch import launch
    from tune.space import load_sweep

    sweep = load_sweep(sweep_file(), ["objective=linear_probe"])
    finals = []
    for seed in (0, 1):
        common.progress(f"asha: the demo's base config, seed {seed}")
        cfg = sweep.trial_config({})
        cfg.seed, cfg.name, cfg.output_dir = seed, f"seed-{seed}", str(Path(tmp) / "seeds")
        cfg.train.progress = False
        finals.append(float(launch("pretrain", cfg, progress=False)["last"]["probe_top1"]))
    return {"finals": finals, "spread": abs(finals[0] - finals[1])}


def measure() -> dict[str, Any]:
    from jigclu.ray_session import init_ray
    from tune.report.science import spearman

    init_ray(num_cpus=CONCURRENT)
    with tempfile.TemporaryDirectory(prefix="jigclu-bench-asha-") as tmp:
        full, asha = run("none", tmp), run("asha", tmp)
        seeds = seed_spread(tmp)
    same = sorted(full["trials"]) == sorted(asha["trials"])
    pairs = [(h[0]["knn_top1"], h[-1]["probe_top1"]) for h in full["trials"].values() if len(h) == EPOCHS]
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 3 else None
    final_knn = [(h[-1]["knn_top1"], h[-1]["probe_top1"]) for h in full["trials"].values() if len(h) == EPOCHS]
    rho_final = spearman([a for a, _ in final_knn], [b for _, b in final_knn]) if len(final_knn) >= 3 else None
    init = [h[0].get("init_probe_top1") for h in full["trials"].values() if h and h[0].get("init_probe_top1")]
    return {"full": full, "asha": asha, "seeds": seeds, "same_configs": same, "rho": rho, "rho_final": rho_final, "pairs": len(pairs),
            "init_probe": sum(init) / len(init) if init else None}


def section(res: dict[str, Any], info: dict[str, str]) -> str:
    full, asha = res["full"], res["asha"]
    share = asha["trial_epochs"] / max(full["trial_epochs"], 1)
    gap = (full["best"] - asha["best"]) if full["best"] is not None and asha["best"] is not None else None
    ok = gap is not None and gap <= 1.0 and share <= 0.5
    table = common.markdown_table(
        ["sweep", "trial-epochs", "trials run to the end", "best final probe_top1 (val)", "wall"],
        [["full (FIFO)", str(full["trial_epochs"]), str(full["completed"]), f"{full['best']:.2f}",
          common.fmt_s(full["wall_s"])],
         ["ASHA (kNN rungs)", f"{asha['trial_epochs']} ({share:.0%})", str(asha["completed"]),
          f"{asha['best']:.2f}" if asha["best"] is not None else "-", common.fmt_s(asha["wall_s"])]])
    rho = "n/a" if res["rho"] is None else f"{res['rho']:.2f}"
    rho_final = "n/a" if res["rho_final"] is None else f"{res['rho_final']:.2f}"
    init = f"{res['init_probe']:.2f}" if res["init_probe"] is not None else "n/a"
    return "\n".join([
        f"`{sweep_file().name}` shrunk to {CONFIGS} configurations (Optuna's seeded RandomSampler: the same "
        f"configs in both sweeps: {'yes' if res['same_configs'] else '**no**'}) x {EPOCHS} epochs of 3,200 "
        f"training images, {CONCURRENT} concurrent; objective: linear probe on frozen features, validation split; "
        "ASHA: grace period 1, reduction factor 3, on kNN top-1 (validation split).",
        "",
        table,
        "",
        f"Target: ASHA within 1 point of the full sweep's best with <= 50% of its trial-epochs: "
        f"{common.verdict(ok)} (gap {gap:.2f} points, {share:.0%} of the trial-epochs)." if gap is not None else
        "Target: ASHA within 1 point with <= 50% of the trial-epochs: **missed** (no ASHA trial ran to the end).",
        "",
        f"Spearman's rank correlation, kNN at the first rung (epoch 1) vs the final probe, over the full sweep's "
        f"{res['pairs']} trials: **{rho}** (final kNN vs final probe: {rho_final}). Random-init probe on the same "
        f"split: {init}.",
        "",
        f"Two seeds of the demo sweep's base config (`{sweep_file().name}`, as its trials run it): final probe "
        f"{res['seeds']['finals'][0]:.2f} and {res['seeds']['finals'][1]:.2f}, a spread of "
        f"**{res['seeds']['spread']:.2f}** points: a sweep's best-minus-worst or best-minus-random-init margin "
        "below that is noise.",
        "",
        common.info_block(info),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    info = common.machine_info("1 per trial")
    started = time.time()
    res = measure()
    common.finish_info(info)
    info["benchmark wall"] = common.fmt_s(time.time() - started)
    body = section(res, info)
    print(body)
    if not args.no_write:
        common.write_section(TITLE, body)


if __name__ == "__main__":
    main()
