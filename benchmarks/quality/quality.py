"""Quality benchmark: how good are JigClu's features, at equal CPU time with SimCLR? (make bench-quality)

    python -m benchmarks.quality.quality                       # the whole table (the time budget is printed first)
    python -m benchmarks.quality.quality --points 2.5,5,10,15  # a shorter curve
    python -m benchmarks.quality.quality --render DIR          # redraw RESULTS.md from the JSON files of a run
    python -m benchmarks.quality.quality --quick               # smoke run, seconds per stage, numbers meaningless

Everything scores frozen, globally pooled features on the whole Fashion-MNIST test split (10k; the
scikit-learn digits when Fashion-MNIST is not installed) with the same two measures
(``benchmarks/quality/budget_run.py``): the linear probe of ``jigclu/evaluation/probe.py`` (standardised features,
full-batch multinomial logistic regression, L2 strength chosen on a seeded 20% of the training
side) and kNN (k = 20, cosine, the whole training split as the bank). Stages:

1. **ablation**: one row per change of the recipe (``configs/fashion_mnist.yaml``), each for
   ``--ablation-min`` minutes with every seed of ``--seeds``;
2. **curve**: JigClu and SimCLR (same backbone, augmentation ops, optimiser, data order;
   ``benchmarks/quality/equal_time.py``) trained side by side for the same wall clock, snapshots scored
   at each budget point;
3. **references**: random init, raw pixels, and the same backbone trained supervised;
4. **semi 1%**: ``jigclu semi`` on 1% of the labels (600, class-balanced) from the JigClu
   checkpoint vs from random init, at rates that do not blow up on 600 labels;
5. **export**: ``jigclu export`` of the JigClu checkpoint, loaded into a torchvision ResNet,
   probed again (must match within 0.5 points).

Runs go two at a time, one torch thread each (2 cores: each contender gets one core, and both
sides of every comparison run under the same load). Results: ``## Quality`` in RESULTS.md and
``benchmarks/quality_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.harness import common
from benchmarks.quality import quality_report
from jigclu.data import FASHION_MNIST_DIR

PY = sys.executable

# (key, what changed vs the shipped recipe, overrides)
ABLATION = [
    ("paper", "the paper's patch augmentation (crop scale 0.2, blur p 0.5)",
     ["jigsaw.crop_scale=0.2", "jigsaw.blur_p=0.5"]),
    ("shipped", "shipped recipe (configs/fashion_mnist.yaml)", []),
    ("lr06", "lr 0.6 per 256", ["optim.lr=0.6"]),
    ("noloc", "no location loss (loss.w_loc 0)", ["loss.w_loc=0"]),
]
SEMI_RATES = ["eval.lr=0.01", "eval.classifier_lr=0.2"]  # the paper's 10% rates; its 1% classifier lr 5.0 blows up


def dataset() -> str:
    return "fashion_mnist" if Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file() else "digits"


def job(out: Path, method: str, points: str, *overrides: str, save: Path | None = None) -> list[str]:
    cmd = [PY, "-m", "benchmarks.quality.budget_run", "--threads", "1", "--method", method, "--points", points,
           "--out", str(out), *overrides]
    return cmd + (["--save", str(save)] if save else [])


def run_pairs(jobs: list[tuple[Path, list[str]]], label: str, minutes: float, env: dict[str, str]) -> None:
    """Run ``jobs`` (result file, command) two at a time, with a bar over the stage's estimated
    minutes (a plain line per finished run when not on a terminal); skip those whose file exists (a
    rerun goes on where it stopped). A failed job prints its log's tail and stops the benchmark."""
    todo = [(out, cmd) for out, cmd in jobs if not out.exists()]
    tty = sys.stdout.isatty()
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("of ~{task.fields[est]}"),
                  disable=not tty) as bar:
        task = bar.add_task(f"{label} ({len(jobs)} runs)", total=max(minutes, 0.01) * 60, est=f"{minutes:.0f} min")
        for i in range(0, len(todo), 2):
            procs = []
            for out, cmd in todo[i:i + 2]:
                log = out.with_suffix(".log").open("w")
                procs.append((out, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                    cwd=common.REPO_ROOT), log))
            while any(p.poll() is None for _, p, _ in procs):
                time.sleep(1.0)
                bar.update(task, completed=min(time.perf_counter() - start, 0.99 * minutes * 60))
            for out, proc, log in procs:
                log.close()
                if proc.returncode != 0 or not out.exists():
                    tail = out.with_suffix(".log").read_text().strip().splitlines()[-5:]
                    raise SystemExit(f"quality: {out.stem} failed (exit {proc.returncode}): " + " | ".join(tail))
                if not tty:
                    print(f"{label}: {out.stem} done ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
        bar.update(task, completed=max(minutes, 0.01) * 60)


def semi_jobs(root: Path, ckpt: Path, epochs: int, quick: bool) -> list[tuple[Path, list[str]]]:
    jobs = []
    for name, pre in (("jigclu", [f"eval.pretrained={ckpt}"]), ("random", [])):
        out = root / f"semi-{name}.json"
        cfg = [f"data.dataset={dataset()}", "data.image_size=32", "jigsaw.crop_size=32", "model.arch=resnet18_small",
               "model.width=16", "eval.labels=1%", f"eval.epochs={epochs}", "eval.batch_size=64", *SEMI_RATES,
               "train.progress=false", f"output_dir={root / 'runs'}", f"name=semi-{name}", *pre]
        if quick:
            cfg.append("eval.val_limit=500")
        script = ("import json,sys; from jigclu.config import load_config; from jigclu.launch import launch; "
                  "s=launch('semi', load_config(None, sys.argv[2:]), progress=False, notify=lambda n: None); "
                  "open(sys.argv[1],'w').write(json.dumps({'best': s['best_val_top1'], 'last': s['last']['val_top1']}))")
        jobs.append((out, [PY, "-c", script, str(out), *cfg]))
    return jobs


def stage_minutes(args: argparse.Namespace) -> dict[str, float]:
    """Wall-clock estimate of each stage (training budgets + ~2 min to score each snapshot on 1 core)."""
    score = 0.1 if args.quick else 2.0
    points = [float(p) for p in args.points.split(",")]
    pairs = (len(ABLATION) * len(args.seeds) + 1) // 2
    return {"ablation": pairs * (args.ablation_min + score), "curve": max(points) + score * len(points),
            "references": args.supervised_min + 2 * score, "semi 1%": 0.5 if args.quick else 6.0, "export": score}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="5,10,20,30", help="budget points of the curve, minutes per method")
    parser.add_argument("--ablation-min", type=float, default=3.0, help="minutes of training per ablation run")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    parser.add_argument("--supervised-min", type=float, default=10.0)
    parser.add_argument("--semi-epochs", type=int, default=30)
    parser.add_argument("--results", default=None, help="keep the JSON files here (a rerun skips finished runs)")
    parser.add_argument("--render", default=None, metavar="DIR", help="only redraw RESULTS.md from DIR's JSON files")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, does not write RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.ablation_min, args.seeds, args.supervised_min, args.semi_epochs = "0.05,0.1", 0.05, [0], 0.05, 1
    if args.render:
        quality_report.write(Path(args.render), ABLATION, args)
        return 0
    root = Path(args.results or tempfile.mkdtemp(prefix="jigclu-quality-")).resolve()  # the jobs run in the repository
    root.mkdir(parents=True, exist_ok=True)
    est = stage_minutes(args)
    print(f"quality benchmark on {dataset()}, CPU {torch.backends.cpu.get_cpu_capability()}, results in {root}: "
          f"about {sum(est.values()):.0f} min (" + ", ".join(f"{k} {v:.0f}" for k, v in est.items()) + ")", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    data = [f"data.dataset={dataset()}"] + (["data.limit=2000"] if args.quick else [])
    t0 = time.perf_counter()
    run_pairs([(root / f"ablation-{key}-s{seed}.json",
                job(root / f"ablation-{key}-s{seed}.json", "jigclu", f"{args.ablation_min:g}", f"seed={seed}", *data, *over))
               for key, _, over in ABLATION for seed in args.seeds], "ablation", est["ablation"], env)
    ckpt = root / "jigclu-checkpoint.pt"
    run_pairs([(root / "curve-jigclu.json", job(root / "curve-jigclu.json", "jigclu", args.points, *data, save=ckpt)),
               (root / "curve-simclr.json", job(root / "curve-simclr.json", "simclr", args.points, *data))],
              "curve", est["curve"], env)
    run_pairs([(root / "ref-supervised.json", job(root / "ref-supervised.json", "supervised",
                                                  f"{args.supervised_min:g}", *data)),
               (root / "ref-init.json", job(root / "ref-init.json", "jigclu", "0", "--pixels", *data))],
              "references", est["references"], env)
    run_pairs(semi_jobs(root, ckpt, args.semi_epochs, args.quick), "semi 1%", est["semi 1%"], env)
    run_pairs([(root / "export.json", [PY, "-m", "benchmarks.quality.export_check", str(ckpt), str(root / "export.json"),
                                       *data])],
              "export", est["export"], env)
    (root / "meta.json").write_text(json.dumps({"minutes": (time.perf_counter() - t0) / 60, "dataset": dataset(),
                                                "cpu": torch.backends.cpu.get_cpu_capability()}))
    if args.quick:
        print(quality_report.markdown(root, ABLATION, args, png=root / quality_report.PNG.name))
    else:
        quality_report.write(root, ABLATION, args)
    if not args.results:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
