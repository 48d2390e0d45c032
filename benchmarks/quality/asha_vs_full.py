"""Which early stopping keeps the winner? A full sweep, ASHA (stop) and the promotion scheduler on
the same configs, each config's true value measured over seeds.

The same ``CONFIGS`` configurations (Optuna's seeded RandomSampler draws them whatever the results)
of the demo sweep (``tune/configs/pretrain_fashion.yaml``, digits when Fashion-MNIST is not
installed), shrunk to a short budget, run as:

- **full**: FIFO, every config to its last epoch, with seeds 0, 1 and 2 (three sweeps): a config's
  *true value* is its mean final objective over the three seeds, and the pooled seed standard
  deviation is the noise a pick is judged against;
- **ASHA**: Ray's ASHA (it stops the trials behind at a rung), seed 0, with kNN and with the probe at
  the rungs;
- **promote**: the promotion scheduler (pause at rungs, resume the best ``1/eta``), seed 0, with kNN
  and with the probe at the rungs.

Repeats are off in every sweep (each trial is one draw of the sampler, so every sweep runs the same
configs): the three full sweeps are the repeats.

Each sweep picks the config with the best final objective among its trials that ran every epoch
(as a sweep without repeats does). Reported: the trial-epochs each used, the true value of its pick
against the best true value, and, from the full sweeps, Spearman's rank correlation at each rung of
kNN and of the probe with the true value (which rung metric predicts the objective). Target: the
promotion scheduler's pick within the noise (or 1 point) of the full sweep's pick with <= 40% of its
trial-epochs.

Every sweep lives under ``--results DIR`` (default: ``bench-results/sweeps`` in the repository,
git-ignored): a run cut short (a session's end) is carried on by the same command, finished sweeps
are read, not run again.

    python -m benchmarks.quality.asha_vs_full [--results DIR]     # writes the section of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import common

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
CONFIGS, EPOCHS, CONCURRENT, SEEDS, ETA = 27, 5, 2, (0, 1, 2), 3
TITLE = "ASHA vs full sweep"
OBJECTIVE = "probe_top1"


def sweep_file() -> Path:
    name = "pretrain_fashion.yaml" if FASHION.exists() else "pretrain_digits.yaml"
    return common.REPO_ROOT / "tune" / "configs" / name


ARMS = {  # name: (label, scheduler, rung metric, reduction factor)
    "full": ("full (FIFO)", "none", "knn_top1", ETA),
    "asha": ("ASHA (stop), kNN rungs", "asha", "knn_top1", ETA),
    "asha-probe": ("ASHA (stop), probe rungs", "asha", OBJECTIVE, ETA),
    "promote": ("promotion (pause), kNN rungs", "promote", "knn_top1", ETA),
    "promote-probe": ("promotion (pause), probe rungs", "promote", OBJECTIVE, ETA),
    # eta 9: at this 5-epoch horizon eta 3 cannot reach 40% of the trial-epochs (see halving_floor)
    "asha-eta9": ("ASHA (stop), kNN rungs, eta 9", "asha", "knn_top1", 9),
    "asha-probe-eta9": ("ASHA (stop), probe rungs, eta 9", "asha", OBJECTIVE, 9),
    "promote-eta9": ("promotion (pause), kNN rungs, eta 9", "promote", "knn_top1", 9),
    "promote-probe-eta9": ("promotion (pause), probe rungs, eta 9", "promote", OBJECTIVE, 9),
}


def overrides(name: str, output_dir: str, scheduler: str, seed: int, rung_metric: str, eta: int) -> list[str]:
    return [f"name={name}", f"output_dir={output_dir}", f"num_samples={CONFIGS}", f"max_concurrent={CONCURRENT}",
            "searcher=random", "objective=linear_probe", "time_budget_s=null", "test_top_k=0", "repeats=null",
            f"rung_metric={rung_metric}",
            f"scheduler.type={scheduler}", "scheduler.grace_period=1", f"scheduler.reduction_factor={eta}",
            f"config.seed={seed}", f"config.train.epochs={EPOCHS}", "config.train.progress=false",
            "config.data.limit=2400", "config.monitor.train_limit=1500", "config.monitor.test_limit=1000"]


def rows(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(arm: str, seed: int, results: Path) -> dict[str, Any]:
    """One sweep (continued if an earlier run of the benchmark left it unfinished): config -> rows."""
    from tune.space import load_sweep
    from tune.sweep import run_sweep

    _, scheduler, rung_metric, eta = ARMS[arm]
    name = f"bench-{arm}-s{seed}"
    done = results / f"{name}.done.json"
    settings = overrides(name, str(results), scheduler, seed, rung_metric, eta)[2:]  # not the name, not the folder
    recorded = results / f"{name}.settings.json"
    if recorded.exists() and json.loads(recorded.read_text()) != settings:
        raise SystemExit(f"bench-sweeps: {results / name} was run with other settings; remove it to run it again")
    if not done.exists():
        common.progress(f"sweeps: {CONFIGS} configs x {EPOCHS} epochs, {ARMS[arm][0]}, seed {seed}")
        recorded.write_text(json.dumps(settings))
        sweep = load_sweep(sweep_file(), overrides(name, str(results), scheduler, seed, rung_metric, eta))
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
    full = {s: run("full", s, results) for s in SEEDS}
    arms = {"full": full[SEEDS[0]], **{arm: run(arm, SEEDS[0], results) for arm in ARMS if arm != "full"}}
    configs = sorted(set.intersection(*(set(f["trials"]) for f in full.values())))
    # a run the collapse rule stopped early counts with its last value: that is what the config gave
    finals = {c: [full[s]["trials"][c][-1][OBJECTIVE] for s in SEEDS
                  if full[s]["trials"][c] and OBJECTIVE in full[s]["trials"][c][-1]] for c in configs}
    true = {c: statistics.mean(v) for c, v in finals.items() if len(v) == len(SEEDS)}
    # the noise a pick is judged by: the pooled sd of the configs whose three runs all ran every epoch (a
    # run the collapse rule cut at epoch 1 against one that went on is a 10-point "spread" no pick faces)
    ran_out = [c for c in true if all(len(full[s]["trials"][c]) == EPOCHS for s in SEEDS)]
    noise, noise_all = pooled_sd([finals[c] for c in ran_out]), pooled_sd([finals[c] for c in true])
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
    return {"arms": arms, "picks": picks, "true": true, "noise": noise, "noise_all": noise_all, "n_noise": len(ran_out),
            "rungs": rungs, "same_configs": same,
            "best_true": max(true.values()) if true else None, "n_true": len(true)}


def pooled_sd(values: list[list[float]]) -> float | None:
    """The root mean of the per-config variances over seeds."""
    return statistics.mean(statistics.variance(v) for v in values) ** 0.5 if values else None


def halving_floor(eta: int) -> int:
    """The fewest trial-epochs successive halving spends on ``CONFIGS`` configs: ``ceil(n / eta^k)``
    configs train from rung ``k - 1`` to rung ``k`` (epoch ``EPOCHS`` the last)."""
    from tune.spec import milestones

    edges = [0, *milestones(1, eta, EPOCHS), EPOCHS]
    return sum(math.ceil(CONFIGS / eta ** k) * (hi - lo) for k, (lo, hi) in enumerate(zip(edges, edges[1:])))


def section(res: dict[str, Any], info: dict[str, str]) -> str:
    arms, true, best, noise = res["arms"], res["true"], res["best_true"], res["noise"]
    base = arms["full"]["trial_epochs"]
    full_value = true.get(res["picks"]["full"]) if res["picks"]["full"] else None
    within = max(noise or 0.0, 1.0)
    table, met = [], {}
    for name, (label, _, _, eta) in ARMS.items():
        arm, chosen = arms[name], res["picks"][name]
        value = true.get(chosen) if chosen else None
        share = arm["trial_epochs"] / max(base, 1)
        behind = full_value - value if value is not None and full_value is not None else None
        if name != "full":
            met[label] = behind is not None and behind <= within and share <= 0.4
        floor = "-" if name == "full" else f"{halving_floor(eta) / max(base, 1):.0%}"
        table.append([label, f"{arm['trial_epochs']} ({share:.0%})", floor,
                      str(sum(len(h) == EPOCHS for h in arm["trials"].values())),
                      f"{arm['trials'][chosen][-1][OBJECTIVE]:.2f}" if chosen else "-",
                      f"{value:.2f}" if value is not None else "-",
                      f"{best - value:.2f}" if value is not None else "-",
                      "-" if name == "full" else f"{behind:+.2f}" if behind is not None else "-",
                      "" if name == "full" else common.verdict(met[label]), common.fmt_s(arm["wall_s"])])
    rung_lines = [f"| {r['epoch']} | {r['metric']} | {r['n']} | " + (f"{r['rho']:.2f}" if r["rho"] is not None else "n/a")
                  + " |" for r in res["rungs"]]
    return "\n".join([
        f"`{sweep_file().name}` shrunk to {CONFIGS} configurations (Optuna's seeded RandomSampler: the same configs "
        f"in every sweep: {'yes' if res['same_configs'] else '**no**'}) x {EPOCHS} epochs of 2,400 training images, "
        f"{CONCURRENT} concurrent, no repeats; objective: linear probe on frozen features ({OBJECTIVE}), validation "
        f"split; ASHA and promotion: grace period 1, reduction factor {ETA} unless the row says 9. A config's "
        f"**true value**: its mean final {OBJECTIVE} over the full sweeps with seeds {', '.join(map(str, SEEDS))} "
        f"({res['n_true']} configs); best true value {best:.2f}. **Seed noise: pooled sd {noise:.2f} points** over the "
        f"{res['n_noise']} configs whose three runs all ran every epoch ({res['noise_all']:.2f} over all "
        f"{res['n_true']}: a run the collapse rule cut at epoch 1 beside one that went on inflates it).",
        "",
        common.markdown_table(["sweep (seed 0)", "trial-epochs (of full)", "halving floor", "trials run to the end",
                               "its pick: seed-0 value", "its pick: true value", "best true − pick",
                               "full's pick − pick", "target", "wall"], table),
        "",
        f"Target: a pick within the noise ({within:.2f} points: the pooled seed sd, at least 1) of the full sweep's "
        f"pick's true value, with <= 40% of its trial-epochs. Met by: "
        f"{', '.join(k for k, v in met.items() if v) or 'none'}. The halving floor is the fewest trial-epochs "
        f"successive halving can spend at this horizon: every config's first epoch, 1/eta of them on to the next "
        f"rung, and so on to epoch {EPOCHS}. With eta {ETA} it is {halving_floor(ETA)} trial-epochs, above 40%, so "
        f"no eta-{ETA} scheduler can meet the target on a {EPOCHS}-epoch horizon; eta 9 (the top 3 of 27 go on "
        f"from epoch 1) can. ASHA and the promotion scheduler spend more than the floor because the top 1/eta "
        f"of a rung is judged on what it has seen so far: a trial promoted early stays promoted when better ones "
        f"arrive (asynchronous promotion).",
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
