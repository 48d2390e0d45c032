"""The recipe search's last stage (issue #26, ``make bench-recipe``): the leaders of each recipe sweep
trained for the whole budget, with two seeds, the best kept by validation mean.

    python -m benchmarks.quality.recipe_finals --sweeps SWEEP_DIR[,SWEEP_DIR] --results DIR
    python -m benchmarks.quality.recipe_finals --sweeps ... --results DIR --render   # only the tables

A sweep directory is one a recipe sweep wrote (``jigclu tune --config tune/configs/recipe_fashion.yaml``,
and its SimCLR twin ``recipe_simclr_fashion.yaml``): its report's leaders over seeds (``seeds.leaders``,
ranked by their mean) are its top configs, each run from the trial's own ``config.yaml``. Every final is a
``benchmarks/quality/budget_run.py`` run: ``--minutes`` of training on one core (the schedule on time,
snapshots at ``--points``), on the training side of the sweep's own split (its validation split
carved out, never trained on), then scored: the last snapshot on the validation split (what
selection reads) and every snapshot once on the whole test split (what the tables report). Per
sweep, the winner is the leader with the best validation mean over ``--seeds``. One more run scores
random init and the raw pixels on the same split. Runs go two at a time, one thread each, and a rerun
skips runs whose JSON exists (``--results`` keeps them), so a run cut short goes on where it stopped.
Each pair is one JigClu final and the SimCLR final of the same rank and seed, so the two methods always
share the machine's load (and its CPU: each JSON records the capability, the tables list them). Last,
the recipes before the search (JigClu's hand-made one, SimCLR with JigClu's lr and T 0.2) train the same
way on the same split, with the same seeds: what the search bought each method (``--no-untuned`` skips them).
The tables go to ``## Recipe search`` in RESULTS.md (``benchmarks/quality/recipe_report.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmarks.harness import common
from benchmarks.quality import recipe_report
from benchmarks.quality.quality import PY, run_pairs


def leaders(sweep: Path, top: int) -> tuple[list[str], dict[str, Any]]:
    """The sweep's top ``top`` trial ids (its leaders over seeds, else its best trials) and what its
    report says of the search (trials, compute, the leaders' validation values)."""
    out = subprocess.run([PY, "-m", "jigclu.cli", "report", str(sweep), "--format", "json", "--top", str(top)],
                         capture_output=True, text=True, cwd=common.REPO_ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if out.returncode != 0 and not out.stdout.strip():
        raise SystemExit(f"recipe_finals: cannot read the sweep {sweep}: {out.stderr.strip().splitlines()[-1:]}")
    report = json.loads(out.stdout)
    seeds = (report.get("seeds") or {}).get("leaders") or []
    ids = [leader["trial_id"] for leader in sorted(seeds, key=lambda x: x["rank"])]
    ids += [row["trial_id"] for row in report.get("top") or [] if row.get("trial_id") not in ids]
    if not ids:
        raise SystemExit(f"recipe_finals: the sweep {sweep} has no ranked trial yet")
    summary = {key: report.get(key) for key in ("counts", "compute_s", "wall_clock_s", "started_at")}
    summary["leaders"] = seeds
    summary["params"] = {row["trial_id"]: row.get("params") for row in report.get("top") or []}
    return ids[:top], summary


def trial_config(sweep: Path, trial_id: str) -> Path:
    path = sweep / f"trial-{trial_id}" / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"recipe_finals: {path} is missing: is {sweep} a finished recipe sweep?")
    return path


def final_job(root: Path, sweep: Path, trial_id: str, seed: int, args: argparse.Namespace) -> tuple[Path, list[str]]:
    """One final: the trial's config, this seed, ``--minutes`` of training, snapshots at ``--points``."""
    config = trial_config(sweep, trial_id)
    recipe = yaml.safe_load(config.read_text())
    method = recipe.get("method", "jigclu")
    out = root / f"{sweep.name}-{trial_id}-s{seed}.json"
    cmd = [PY, "-m", "benchmarks.quality.budget_run", "--threads", "1", "--method", method, "--config", str(config),
           "--points", args.points, "--out", str(out), "--no-monitors", "--save", str(out.with_suffix(".pt")),
           f"seed={seed}"]
    if method == "simclr":  # budget_run's SimCLR default is the untuned T; a tuned one keeps its own
        cmd += ["--simclr-temperature", str(recipe["loss"]["temperature"])]
    return out, cmd + args.overrides


# The recipes before the search (``configs/fashion_mnist.yaml`` until issue #26, and ``## Quality``'s SimCLR
# with JigClu's lr and a guessed T), as overrides on the first JigClu leader's trial config: the same split.
UNTUNED = {"jigclu": ["jigsaw.crop_scale=0.5", "jigsaw.cross_ratio=0.3", "loss.w_loc=1.0", "loss.temperature=0.3",
                      "optim.lr=0.2", "data.batch_size=128", "model.proj_dim=128", "model.width=16",
                      "jigsaw.crop_size=32"],
           "simclr": ["jigsaw.crop_scale=0.5", "optim.lr=0.2", "data.batch_size=128", "model.proj_dim=128",
                      "model.width=16", "jigsaw.crop_size=32"]}
UNTUNED_T = {"simclr": 0.2}


def untuned_job(root: Path, sweep: Path, trial_id: str, method: str, seed: int,
                args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The recipe ``method`` had before the search, trained and scored exactly as a final."""
    out = root / f"untuned-{method}-s{seed}.json"
    cmd = [PY, "-m", "benchmarks.quality.budget_run", "--threads", "1", "--method", method, "--config",
           str(trial_config(sweep, trial_id)), "--points", args.points, "--out", str(out), "--no-monitors",
           *UNTUNED[method], f"seed={seed}"]
    if method in UNTUNED_T:
        cmd += ["--simclr-temperature", str(UNTUNED_T[method])]
    return out, cmd + args.overrides


def reference_job(root: Path, sweep: Path, trial_id: str, args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Random init and the raw pixels, on the same split as the finals."""
    out = root / "references.json"
    return out, [PY, "-m", "benchmarks.quality.budget_run", "--threads", "1", "--config",
                 str(trial_config(sweep, trial_id)), "--points", "0", "--pixels", "--no-monitors", "--out", str(out),
                 *args.overrides]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", required=True, help="recipe sweep directories, comma-separated (JigClu first)")
    parser.add_argument("--results", required=True, help="keep each run's JSON here (a rerun skips finished runs)")
    parser.add_argument("--top", type=int, default=2, help="leaders of each sweep to train for the whole budget")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    parser.add_argument("--points", default="5,10,20,30", help="snapshots, minutes of training; the last is the budget")
    parser.add_argument("--no-untuned", dest="untuned", action="store_false",
                        help="skip the recipes before the search (JigClu's hand-made one, SimCLR's untuned one)")
    parser.add_argument("--render", action="store_true", help="only print and write the tables from --results")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print the tables, leave RESULTS.md")
    parser.add_argument("overrides", nargs="*", help="key=value for every run (e.g. data.limit=2000 for a smoke run)")
    args = parser.parse_args(argv)
    sweeps = [Path(s).resolve() for s in args.sweeps.split(",")]
    root = Path(args.results).resolve()
    root.mkdir(parents=True, exist_ok=True)
    found = {sweep.name: leaders(sweep, args.top) for sweep in sweeps}
    plan = {name: ids for name, (ids, _) in found.items()}
    (root / "plan.json").write_text(json.dumps({"leaders": plan, "searches": {n: s for n, (_, s) in found.items()},
                                                "seeds": args.seeds, "points": args.points}, indent=1))
    if not args.render:
        minutes = max(float(p) for p in args.points.split(","))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        first = sweeps[0]
        run_pairs([reference_job(root, first, plan[first.name][0], args)], "references", 3.0, env)
        # side by side: the two methods' leaders of the same rank, same seed, share the machine's load
        jobs = [final_job(root, sweep, plan[sweep.name][rank], seed, args) for rank in range(args.top)
                for seed in args.seeds for sweep in sweeps if rank < len(plan[sweep.name])]
        run_pairs(jobs, "finals", (len(jobs) + 1) // 2 * (minutes + 6), env)
        if args.untuned:  # what the search bought: the recipes before it, on the same split, side by side
            base = plan[first.name][0]
            jobs = [untuned_job(root, first, base, method, seed, args) for seed in args.seeds for method in UNTUNED]
            run_pairs(jobs, "untuned", len(args.seeds) * (minutes + 6), env)
    text = recipe_report.markdown(root, plan, args.seeds, recipe_report.PNG if args.write else None)
    print(text)
    if args.write:
        recipe_report.write(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
