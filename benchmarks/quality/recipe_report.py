"""The tables of the recipe search (``benchmarks/quality/recipe_finals.py``): ``## Recipe search`` in RESULTS.md.

Reads the finals' JSON files (``budget_run.py``'s) and ``plan.json``; selection reads only the
validation values (``val``), the tables report the test split (``points``), each model scored once.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from benchmarks.harness import common
from benchmarks.quality.quality_report import plot
from tune.report.seeds import interval

SECTION = "Recipe search"
PNG = common.BENCH_DIR / "recipe_curve.png"
TARGETS = {"probe": 90.0, "knn": 88.0, "over_pixels": 2.0}
SHOWN = {"jigsaw.crop_size": "side", "model.width": "width", "model.proj_dim": "proj", "data.batch_size": "batch",
         "optim.lr": "lr", "loss.temperature": "T", "loss.w_loc": "w_loc", "jigsaw.crop_scale": "crop scale",
         "jigsaw.cross_ratio": "cross"}


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def runs_of(root: Path, sweep: str, trial: str, seeds: list[int]) -> list[dict[str, Any]]:
    """The finished finals of one leader, in seed order."""
    return [r for r in (_load(root / f"{sweep}-{trial}-s{s}.json") for s in seeds) if r is not None]


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{mean(values):.2f}" + (f" ± {stdev(values):.2f}" if len(values) > 1 else "")


def _params(params: dict[str, Any] | None) -> str:
    out = []
    for key, short in SHOWN.items():  # side: JigClu's montage, SimCLR's views
        if params and key in params:
            v = params[key]
            out.append(f"{short} {v:.3g}" if isinstance(v, float) else f"{short} {v}")
    return ", ".join(out) or "-"


def winner(root: Path, plan: dict[str, Any], sweep: str, seeds: list[int]) -> str | None:
    """The leader with the best validation mean among those with every seed finished."""
    done = {t: runs_of(root, sweep, t, seeds) for t in plan["leaders"][sweep]}
    full = {t: mean(r["val"]["probe"] for r in runs) for t, runs in done.items() if len(runs) == len(seeds)}
    return max(full, key=full.__getitem__) if full else None


def leaders_table(root: Path, plan: dict[str, Any], sweep: str, seeds: list[int]) -> list[str]:
    search = plan["searches"][sweep]
    rows = []
    for trial in plan["leaders"][sweep]:
        runs = runs_of(root, sweep, trial, seeds)
        vals = [r["val"]["probe"] for r in runs]
        ci = interval(vals, 0.95)
        last = [r["points"][max(r["points"], key=float)] for r in runs]
        sweep_val = next((f"{x['mean']:.2f} ({x['n']} seeds)" for x in search.get("leaders") or []
                          if x["trial_id"] == trial), "-")
        rows.append([trial, _params(search["params"].get(trial)), sweep_val, len(runs),
                     f"{mean(vals):.2f}" if vals else "-", f"{ci[0]:.2f} to {ci[1]:.2f}" if ci else "-",
                     _mean_sd([x["probe"] for x in last]), _mean_sd([x["knn"] for x in last]),
                     f"{mean(r['images'] for r in runs):,.0f}" if runs else "-"])
    columns = ["trial", "config", "sweep val probe (3 min)", "seeds", "val probe (mean)", "95% interval",
               "test probe", "test kNN", "images seen"]
    return [common.markdown_table(columns, rows)]


def curve(root: Path, plan: dict[str, Any], chosen: dict[str, str], seeds: list[int]) -> tuple[list[str], list[float]]:
    """Test probe and kNN of each method's winner at each snapshot (mean ± sd over seeds), and the
    JigClu - SimCLR probe margins (first two sweeps)."""
    names = list(chosen)
    runs = {n: runs_of(root, n, chosen[n], seeds) for n in names}
    points = sorted({p for rs in runs.values() for r in rs for p in r["points"]}, key=float)
    rows, margins = [], []
    for p in points:
        row: list[Any] = [p]
        probes = {n: [r["points"][p]["probe"] for r in runs[n] if p in r["points"]] for n in names}
        knns = {n: [r["points"][p]["knn"] for r in runs[n] if p in r["points"]] for n in names}
        row += [_mean_sd(probes[n]) for n in names] + [_mean_sd(knns[n]) for n in names]
        if len(names) == 2 and probes[names[0]] and probes[names[1]]:
            margins.append(mean(probes[names[0]]) - mean(probes[names[1]]))
            row.append(f"{margins[-1]:+.2f}")
        rows.append(row)
    columns = ["minutes", *(f"{n} probe" for n in names), *(f"{n} kNN" for n in names)]
    columns += ["probe: first - second"] if len(names) == 2 else []
    return [common.markdown_table(columns, rows)], margins


def _verdict(ok: bool, by: float) -> str:
    return "**met**" if ok else f"**missed** by {abs(by):.2f}"


def mean_curves(root: Path, chosen: dict[str, str], seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Each kept recipe's test probe per snapshot, the mean over its seeds (for the plot)."""
    out = {}
    for sweep, trial in chosen.items():
        runs = runs_of(root, sweep, trial, seeds)
        points = {p for r in runs for p in r["points"]}
        out[sweep] = {"points": {p: {"probe": mean(r["points"][p]["probe"] for r in runs if p in r["points"])}
                                 for p in points}}
    return out


def markdown(root: Path, plan_leaders: dict[str, list[str]], seeds: list[int], png: Path | None = None) -> str:
    """The section's text; with ``png``, the tuned-vs-tuned curve is drawn there too (matplotlib)."""
    plan = json.loads((root / "plan.json").read_text())
    out = [f"The recipe search of issue #26, generated by `make bench-recipe` (`python -m benchmarks.quality.recipe_finals`) "
           f"on {dt.date.today().isoformat()}; CPU capability of the finals: **{_cpu(root)}**. The sweeps search at a short per-trial "
           "budget (3 epochs x 60 s of training on one core, `train.epoch_s`), TPE + the promotion scheduler, "
           "selection on the validation split's linear probe; each sweep's leaders then train for the whole budget "
           f"on one core with seeds {', '.join(map(str, seeds))}, and the best validation mean wins. Every test number "
           "below is the whole 10k test split, each model scored once; bank and probe fit: the training side "
           "(validation split carved out).", ""]
    chosen: dict[str, str] = {}
    for sweep in plan_leaders:
        search = plan["searches"][sweep]
        counts = search.get("counts") or {}
        out += [f"### Sweep `{sweep}`", "",
                f"{counts.get('total', '?')} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v and k != 'total')}), "
                "compute "
                f"{(search.get('compute_s') or 0) / 60:.0f} min of trial time, wall clock "
                f"{(search.get('wall_clock_s') or 0) / 60:.0f} min.", "", *leaders_table(root, plan, sweep, seeds), ""]
        best = winner(root, plan, sweep, seeds)
        if best:
            chosen[sweep] = best
            out += [f"Kept (best validation mean): trial `{best}`.", ""]
    refs = _load(root / "references.json")
    if chosen:
        table, margins = curve(root, plan, chosen, seeds)
        out += ["### Tuned vs tuned: equal wall clock", "", *table, ""]
        refs_probe = {"raw pixels": refs["pixels"]["probe"], "random init": refs["points"]["0"]["probe"]} if refs else {}
        if png is not None and plot(mean_curves(root, chosen, seeds), refs_probe, png):
            out += [f"![tuned JigClu vs tuned SimCLR]({png.name})", ""]
        out += ["Snapshots of one run per seed, sized for the last point (the lr reaches 0 only there).", ""]
        out += probe_table(root, chosen, seeds, refs)
        out += _targets(root, chosen, seeds, refs, margins)
    return "\n".join(out)


def probe_table(root: Path, chosen: dict[str, str], seeds: list[int], refs: dict[str, Any] | None) -> list[str]:
    """Each kept recipe at the budget (mean ± sd over seeds) and the references, on the same split."""
    rows = []
    for sweep, trial in chosen.items():
        last = [r["points"][max(r["points"], key=float)] for r in runs_of(root, sweep, trial, seeds)]
        rows.append([f"`{sweep}` trial `{trial}`", _mean_sd([x["probe"] for x in last]),
                     _mean_sd([x["knn"] for x in last]), len(last)])
    for method, label in (("jigclu", "JigClu, the hand-made recipe (before the search)"),
                          ("simclr", "SimCLR, untuned (JigClu's old lr, T 0.2)")):
        last = [r["points"][max(r["points"], key=float)] for r in runs_of(root, "untuned", method, seeds)]
        if last:
            rows.append([label, _mean_sd([x["probe"] for x in last]), _mean_sd([x["knn"] for x in last]), len(last)])
    if refs:
        rows += [["raw pixels", f"{refs['pixels']['probe']:.2f}", f"{refs['pixels']['knn']:.2f}", "-"],
                 ["random init", f"{refs['points']['0']['probe']:.2f}", f"{refs['points']['0']['knn']:.2f}", "-"]]
    bank = next((r.get("train_images") for r in (_load(p) for p in sorted(root.glob("*.json"))) if r and r.get("train_images")), None)
    return ["### Probe table", "", common.markdown_table(["features", "linear probe", f"kNN (k=20, {bank or '?'} bank)", "seeds"], rows),
            "", "The kept recipes at the budget, on one core each; raw pixels and random init on the same split.", ""]


def _targets(root: Path, chosen: dict[str, str], seeds: list[int], refs: dict[str, Any] | None,
             margins: list[float]) -> list[str]:
    first = next(iter(chosen))
    runs = runs_of(root, first, chosen[first], seeds)
    last = [r["points"][max(r["points"], key=float)] for r in runs]
    probe, knn = mean(x["probe"] for x in last), mean(x["knn"] for x in last)
    lines = ["### Targets", "", f"- linear probe >= {TARGETS['probe']:.0f}: {probe:.2f}, "
             + _verdict(probe >= TARGETS["probe"], probe - TARGETS["probe"]),
             f"- kNN >= {TARGETS['knn']:.0f}: {knn:.2f}, " + _verdict(knn >= TARGETS["knn"], knn - TARGETS["knn"])]
    if refs:
        px, init = refs["pixels"], refs["points"]["0"]
        gap = knn - px["knn"]
        lines += [f"- kNN above raw pixels by >= {TARGETS['over_pixels']:.0f}: {knn:.2f} vs {px['knn']:.2f} ({gap:+.2f}), "
                  + _verdict(gap >= TARGETS["over_pixels"], gap - TARGETS["over_pixels"]),
                  f"- references on the same split: raw pixels probe {px['probe']:.2f}, kNN {px['knn']:.2f}; "
                  f"random init probe {init['probe']:.2f}, kNN {init['knn']:.2f}"]
    if margins and len(chosen) == 2:
        spread = _pooled_sd(root, chosen, seeds)
        ahead = all(m > spread for m in margins)
        lines.append(f"- {first} ahead of {list(chosen)[1]} at every point by more than the seed spread "
                     f"(pooled sd {spread:.2f}): margins {', '.join(f'{m:+.2f}' for m in margins)}, "
                     + ("**met**" if ahead else "**not met**"))
    return lines + [""]


def _pooled_sd(root: Path, chosen: dict[str, str], seeds: list[int]) -> float:
    """Pooled seed sd of the winners' test probe at the budget."""
    groups = []
    for sweep, trial in chosen.items():
        runs = runs_of(root, sweep, trial, seeds)
        groups.append([r["points"][max(r["points"], key=float)]["probe"] for r in runs])
    num = sum((len(g) - 1) * stdev(g) ** 2 for g in groups if len(g) > 1)
    den = sum(len(g) - 1 for g in groups if len(g) > 1)
    return math.sqrt(num / den) if den else float("nan")


def _cpu(root: Path) -> str:
    cpus = {r.get("cpu") for r in (_load(p) for p in root.glob("*.json")) if r and r.get("cpu")}
    return ", ".join(sorted(cpus)) or "none has run yet"


def write(text: str) -> None:
    common.write_section(SECTION, "\n" + text)
    print(f"wrote {common.RESULTS.name}")
