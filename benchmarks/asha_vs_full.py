"""Which early stopping keeps the winner? A full sweep, ASHA (stop) and the promotion scheduler on
the same configs, each config's true value measured over seeds.

The same ``CONFIGS`` configurations (Optuna's seeded RandomSampler draws them whatever the results)
of the demo sweep (``tune/configs/pretrain_fashion.yaml``, digits when Fashion-MNIST is not
installed), shrunk to a short budget, run as:

- **full**: FIFO, every config to its last epoch, with seeds 0, 1 and 2 (three sweeps): a config's
  *true value* is its mean final objective over the three seeds, and the pooled seed standard
  deviation is the noise a pick is judged against;
- **ASHA**: Ray's ASHA (it stops the trials behind at a rung), seed 0;
- **promote**: the promotion scheduler (pause at rungs, resume the best ``1/eta``), seed 0.

Each sweep picks the config with the best final objective among its trials that ran every epoch
(as a sweep without repeats does). Reported: the trial-epochs each used, the true value of its pick
against the best true value, and, from the full sweeps, Spearman's rank correlation at each rung of
kNN and of the probe with the true value (which rung metric predicts the objective). Target: the
promotion scheduler's pick within the noise (or 1 point) of the full sweep's pick with <= 40% of its
trial-epochs.

Every sweep lives under ``--results DIR`` (default: ``bench-results/sweeps`` in the repository,
git-ignored): a run cut short (a session's end) is carried on by the same command, finished sweeps
are read, not run again.

    python benchmarks/asha_vs_full.py [--results DIR]     # writes the section of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import common  # noqa: E402  (sibling module; puts the repository on sys.path)

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
CONFIGS, EPOCHS, CONCURRENT, SEEDS, ETA = 27, 5, 2, (0, 1, 2), 3
TITLE = "ASHA vs full sweep"
OBJECTIVE = "probe_top1"


def sweep_file() -> Path:
    name = "pretrain_fashion.yaml" if FASHION.exists() else "pretrain_digits.yaml"
    return common.REPO_ROOT / "tune" / "configs" / name


def overrides(name: str, output_dir: str, scheduler: str, seed: int) -> list[str]:
    return [f"name={name}", f"output_dir={output_dir}", f"num_samples={CONFIGS}", f"max_concurrent={CONCURRENT}",
            "searcher=random", "objective=linear_probe", "time_budget_s=null", "test_top_k=0",
            f"scheduler.type={scheduler}", "scheduler.grace_period=1", f"scheduler.reduction_factor={ETA}",
            f"config.seed={seed}", f"config.train.epochs={EPOCHS}", "config.train.progress=false",
            "config.data.limit=2400", "config.monitor.train_limit=1500", "config.monitor.test_limit=1000"]


def rows(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(scheduler: str, seed: int, results: Path) -> dict[str, Any]:
    """One sweep (continued if an earlier run of the benchmark left it unfinished): config -> rows."""
    from tune.space import load_sweep
    from tune.sweep import run_sweep

    name = f"bench-{scheduler}-s{seed}"
    done = results / f"{name}.done.json"
    if not done.exists():
        common.progress(f"sweeps: {CONFIGS} configs x {EPOCHS} epochs, scheduler {scheduler}, seed {seed}")
        sweep = load_sweep(sweep_file(), overrides(name, str(results), scheduler, seed))
        summary = run_sweep(sweep, resume=(results / name).exists(), progress=False, num_cpus=CONCURRENT)
        done.write_text(json.dumps({"wall_s": summary["wall_s"], "errored": summary["errored"]}))
    trials = {}
    for trial in (results / name).glob("trial-*"):
        params = json.loads((trial / "sampled.json").read_text())
        trials[json.dumps(params, sort_keys=True)] = rows(trial)
    return {**json.loads(done.read_text()), "trials": trials,
            "trial_epochs": sum(len(h) for h in trials.values())}


def pick(arm: dict[str, Any]) -> str | None:
    """The config a sweep without repeats names: the best final objective among its full trials."""
    full = {c: h[-1][OBJECTIVE] for c, h in arm["trials"].items() if len(h) == EPOCHS and OBJECTIVE in h[-1]}
    return max(full, key=full.get) if full else None


def measure(results: Path) -> dict[str, Any]:
    from jigclu.ray_session import init_ray
    from tune.report.science import spearman
    from tune.spec import milestones

    init_ray(num_cpus=CONCURRENT)
    full = {s: run("none", s, results) for s in SEEDS}
    arms = {"full": full[SEEDS[0]], "asha": run("asha", SEEDS[0], results), "promote": run("promote", SEEDS[0], results)}
    configs = sorted(set.intersection(*(set(f["trials"]) for f in full.values())))
    # a run the collapse rule stopped early counts with its last value: that is what the config gave
    finals = {c: [full[s]["trials"][c][-1][OBJECTIVE] for s in SEEDS
                  if full[s]["trials"][c] and OBJECTIVE in full[s]["trials"][c][-1]] for c in configs}
    true = {c: statistics.mean(v) for c, v in finals.items() if len(v) == len(SEEDS)}
    sds = [statistics.stdev(v) for v in finals.values() if len(v) == len(SEEDS)]
    noise = statistics.mean(x * x for x in sds) ** 0.5 if sds else None
    rungs = []
    for epoch in milestones(1, ETA, EPOCHS):
        for metric in ("knn_top1", OBJECTIVE):
            pairs = [(full[SEEDS[0]]["trials"][c][epoch - 1].get(metric), true[c]) for c in true
                     if len(full[SEEDS[0]]["trials"][c]) >= epoch]
            pairs = [(a, b) for a, b in pairs if a is not None]
            rungs.append({"epoch": epoch, "metric": metric, "n": len(pairs),
                          "rho": spearman([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 3 else None})
    picks = {name: pick(arm) for name, arm in arms.items()}
    same = all(sorted(arm["trials"]) == configs for arm in arms.values())
    return {"arms": arms, "picks": picks, "true": true, "noise": noise, "rungs": rungs, "same_configs": same,
            "best_true": max(true.values()) if true else None, "n_true": len(true)}


def section(res: dict[str, Any], info: dict[str, str]) -> str:
    arms, true, best = res["arms"], res["true"], res["best_true"]
    base = arms["full"]["trial_epochs"]
    table, verdicts = [], {}
    for name, label in (("full", "full (FIFO)"), ("asha", "ASHA (stop, kNN rungs)"),
                        ("promote", "promotion (pause, kNN rungs)")):
        arm, chosen = arms[name], res["picks"][name]
        value = true.get(chosen) if chosen else None
        gap = best - value if value is not None and best is not None else None
        share = arm["trial_epochs"] / max(base, 1)
        verdicts[name] = (value, share)
        table.append([label, f"{arm['trial_epochs']} ({share:.0%})",
                      str(sum(len(h) == EPOCHS for h in arm["trials"].values())),
                      f"{arm['trials'][chosen][-1][OBJECTIVE]:.2f}" if chosen else "-",
                      f"{value:.2f}" if value is not None else "-", f"{gap:.2f}" if gap is not None else "-",
                      common.fmt_s(arm["wall_s"])])
    full_value, noise = verdicts["full"][0], res["noise"]
    promo_value, promo_share = verdicts["promote"]
    within = max(noise or 0.0, 1.0)
    ok = promo_value is not None and full_value is not None and full_value - promo_value <= within \
        and promo_share <= 0.4
    asha_value, asha_share = verdicts["asha"]
    rung_lines = [f"| {r['epoch']} | {r['metric']} | {r['n']} | " + (f"{r['rho']:.2f}" if r["rho"] is not None else "n/a")
                  + " |" for r in res["rungs"]]
    return "\n".join([
        f"`{sweep_file().name}` shrunk to {CONFIGS} configurations (Optuna's seeded RandomSampler: the same configs "
        f"in every sweep: {'yes' if res['same_configs'] else '**no**'}) x {EPOCHS} epochs of 2,400 training images, "
        f"{CONCURRENT} concurrent; objective: linear probe on frozen features ({OBJECTIVE}), validation split; ASHA "
        f"and promotion: grace period 1, reduction factor {ETA}, kNN top-1 at the rungs. A config's **true value**: "
        f"its mean final {OBJECTIVE} over the full sweeps with seeds {', '.join(map(str, SEEDS))} "
        f"({res['n_true']} configs); best true value {best:.2f}; pooled seed sd **{noise:.2f}** points.",
        "",
        common.markdown_table(["sweep (seed 0)", "trial-epochs", "trials run to the end", "its pick: seed-0 value",
                               "its pick: true value", "best true − pick", "wall"], table),
        "",
        f"Target: the promotion scheduler's pick within the noise ({within:.2f} points: the seed sd, at least 1) "
        f"of the full sweep's pick with <= 40% of its trial-epochs: {common.verdict(ok)} "
        f"({'-' if promo_value is None else f'{full_value - promo_value:+.2f}'} points, {promo_share:.0%}). "
        f"ASHA: {'-' if asha_value is None else f'{full_value - asha_value:+.2f}'} points with {asha_share:.0%}.",
        "",
        "Which rung metric predicts the objective: Spearman's rank correlation with the true value, over the "
        "seed-0 full sweep's configs.",
        "",
        "| rung (epoch) | metric | configs | Spearman |",
        "|---|---|---|---|",
        *rung_lines,
        "",
        common.info_block(info),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--results", default=str(common.REPO_ROOT / "bench-results" / "sweeps"),
                        help="where the sweeps live (default: bench-results/sweeps in the repository, git-ignored); "
                        "the same command carries on an unfinished benchmark")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    info = common.machine_info("1 per trial")
    started = time.time()
    res = measure(results)
    common.finish_info(info)
    info["benchmark wall"] = common.fmt_s(time.time() - started) + " (this run; an earlier run may have done part)"
    body = section(res, info)
    print(body)
    if not args.no_write:
        common.write_section(TITLE, body)


if __name__ == "__main__":
    main()
