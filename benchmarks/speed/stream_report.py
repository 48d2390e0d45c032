"""The report of ``benchmarks/speed/stream_memory.py`` (``make bench-stream``): what its runs are, its
table, the ray_data / memory ratios per round, the verdicts against the targets, and the RESULTS.md
section; the constants both share live here so the benchmark imports its report, never the reverse."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.harness import common

TITLE = "Streaming data: memory per worker"
SIZES = (12_000, 120_000)
LOADERS = ("memory", "ray_data")
PX, QUALITY, CLASSES, SEED = 64, 90, 10, 0
BATCH = 64  # global batch (32 per worker)
SHARD_MB, ROW_GROUP_ROWS = 16, 1024
SAMPLE_S = 0.25
CPU_ROLES = ("train", "decode", "coordinator", "other")
RSS_GROWTH_TARGET, THROUGHPUT_TARGET = 1.2, 0.8

# the run: digits.yaml's small model, at the data's 64 px, short epochs, no kNN monitor; ``linear``
# (``--task linear``): a random-init backbone's linear evaluation, scored on a 500-image val split
OVERRIDES = [
    "data.image_size=64", "jigsaw.crop_size=64", "model.width=8", f"data.batch_size={BATCH}",
    "scaling.workers=2", "monitor.knn=false", "train.progress=false",
]
LINEAR = ["data.image_size=64", "jigsaw.crop_size=64", "model.width=8", f"eval.batch_size={BATCH}",
          "scaling.workers=2", "train.progress=false", "data.val_size=500"]


def title(task: str) -> str:
    return TITLE if task == "pretrain" else f"{TITLE} ({task})"


MIB = 1 << 20
COLUMNS = ["loader", "images", "peak RSS per worker (MiB)", "images/s", "wall s", "decode workers (MiB)",
           "CPU s: train / decode / coordinator / other"]


def rows(results: dict[tuple[str, int], list[dict[str, Any]]], sizes: tuple[int, ...]) -> list[list[str]]:
    out = []
    for n in sizes:
        for loader in LOADERS:
            runs = [r for r in results.get((loader, n), []) if "error" not in r]
            if not runs:
                out.append([loader, f"{n:,}", "failed", "-", "-", "-", "-"])
                continue
            rss = max(r["peak_rss"] for r in runs) / MIB
            ips = np.median([r["images_per_s"] for r in runs])
            wall = np.median([r["wall"] for r in runs])
            decode = max(r["decode_peak"] for r in runs) / MIB
            out.append([loader, f"{n:,}", f"{rss:,.0f}", f"{ips:,.0f}", f"{wall:,.0f}",
                        f"{decode:,.0f} ({max(r['decode_workers'] for r in runs)})" if decode else "-",
                        " / ".join(f"{np.median([r['cpu'][role] for r in runs]):.0f}" for role in CPU_ROLES)])
    return out


def ratios(results: dict[tuple[str, int], list[dict[str, Any]]], sizes: tuple[int, ...]) -> dict[str, Any]:
    def ok(loader: str, n: int) -> list[dict[str, Any]]:
        return [r for r in results.get((loader, n), []) if "error" not in r]

    small, big = sizes[0], sizes[-1]
    out: dict[str, Any] = {"growth": {}, "throughput": {}, "later": {}}
    for loader in LOADERS:
        a, b = ok(loader, small), ok(loader, big)
        if a and b:
            out["growth"][loader] = max(r["peak_rss"] for r in b) / max(r["peak_rss"] for r in a)
    for n in sizes:  # per round (the two loaders ran back to back), then the median over rounds
        pairs = [(s, m) for s, m in zip(results.get(("ray_data", n), []), results.get(("memory", n), []))
                 if "error" not in s and "error" not in m]
        for key, name in (("throughput", "images_per_s"), ("later", "later_images_per_s")):
            per_round = [s[name] / m[name] for s, m in pairs if s.get(name) and m.get(name)]
            if per_round:
                out[key][n] = common.Ratio.of(per_round)
    return out


def verdicts(rat: dict[str, Any], sizes: tuple[int, ...]) -> list[str]:
    lines = []
    growth = rat["growth"].get("ray_data")
    factor = sizes[-1] / sizes[0]
    for loader in LOADERS:
        g = rat["growth"].get(loader)
        text = "n/a (a run failed)" if g is None else f"{g:.2f}x"
        lines.append(f"- peak RSS per worker, {sizes[-1]:,} / {sizes[0]:,} images ({factor:.0f}x the data), "
                     f"`{loader}`: {text}")
    lines.append(f"- target: `ray_data` grows <= {RSS_GROWTH_TARGET}x: "
                 + ("n/a" if growth is None else ("MET" if growth <= RSS_GROWTH_TARGET else "**MISSED**")))
    for n in sizes:
        t = rat["throughput"].get(n)
        lines.append(f"- throughput `ray_data` / `memory` at {n:,} images: "
                     + ("n/a" if t is None else f"{t.median:.2f}x ({t.low:.2f}-{t.high:.2f} over {t.n} rounds)"))
    for n in sizes:
        t = rat.get("later", {}).get(n)
        if t is not None:
            lines.append(f"- the same after the first epoch (the stream started) at {n:,} images: "
                         f"{t.median:.2f}x ({t.low:.2f}-{t.high:.2f} over {t.n} rounds)")
    ts = [t.median for t in rat["throughput"].values()]
    lines.append(f"- target: `ray_data` >= {THROUGHPUT_TARGET}x `memory`'s throughput (at every size): "
                 + ("n/a" if len(ts) < len(sizes) else ("MET" if min(ts) >= THROUGHPUT_TARGET else "**MISSED**")))
    return lines


def section(res: dict[str, Any], info: dict[str, str]) -> str:
    sizes = res["sizes"]
    gen = "; ".join(
        f"{n:,} images: {res['bytes'][n] / MIB:,.0f} MiB in {res['shards'][n]} shards"
        + (f", generated in {res['gen_s'][n]:.0f} s" if res["gen_s"].get(n) is not None else "")
        + (" (earlier: from the cache)" if res["cached"][n] else "")
        for n in sizes)
    failures = [f"`{f['loader']}` at {f['n']:,} images, attempt {f['attempt']} (after {f['wall']:.0f} s): "
                + f["error"].splitlines()[0].removesuffix("; log tail:") + "; log: "
                + " / ".join(common.scrub(line.strip()) for line in f["error"].splitlines()[1:][-3:] if line.strip())
                for f in res["failures"]]
    return "\n".join([
        f"Peak RSS per Ray Train worker and end-to-end training throughput, today's in-memory reader "
        f"(`data.loader=memory`: every worker holds every image's encoded bytes) vs the Ray Data path "
        f"(`data.loader=ray_data`: decoded in Ray Data tasks, streamed into the workers), on synthetic "
        f"Parquet datasets of {PX} px RGB JPEG (q{QUALITY}) images, 10 classes of noisy shapes, "
        f"{SHARD_MB} MiB shards of {ROW_GROUP_ROWS}-row groups ({gen}). Each run: `jigclu {res['task']}` "
        + (f"(configs/digits.yaml with {', '.join(f'`{o}`' for o in OVERRIDES[:5])})" if res["task"] == "pretrain" else
           f"({', '.join(f'`{o}`' for o in LINEAR)}; a random-init backbone, its val split scored every epoch)")
        + f", {res['epochs']} epochs "
        f"of {res['steps']} steps, the same for both loaders; loaders alternate, size by size, "
        f"{res['rounds']} round(s); epochs are capped (a {sizes[-1]:,}-image epoch is "
        f"{sizes[-1] // BATCH:,} steps): a capped epoch goes on with the pass of the Ray Data stream the last "
        "one left open, and the first epoch includes the stream's start (its decode workers, the first units, "
        "each worker's local shuffle buffer filled). *peak RSS per worker*: the larger of the two `RayTrainWorker` "
        f"processes' peak RSS, sampled every {SAMPLE_S} s from outside (max over rounds); *images/s*: "
        "images trained in all epochs / sum of `epoch_time_s` (median over rounds; the ratio below: median "
        "of per-round ratios, min-max); *wall*: the whole "
        "command (Ray start, data load, teardown); *decode workers*: the largest peak RSS of a process that "
        "ran Ray Data decode tasks (`ray::MapBatches(DecodeUnits)`), and how many did (RSS counts the "
        "object-store pages a process maps); *CPU s*: CPU seconds of the run's processes by role "
        "(median over rounds): the two Ray Train workers, the decode workers, Ray Data's `SplitCoordinator` "
        "actor (the streaming executor behind `streaming_split`), everything else (driver excluded: Ray's "
        "controller, pool workers starting up, dashboard, raylet). Targets: `ray_data`'s per-worker peak RSS grows "
        f"<= {RSS_GROWTH_TARGET}x when the data grows 10x, at >= {THROUGHPUT_TARGET}x `memory`'s "
        "throughput.",
        "",
        common.markdown_table(COLUMNS, rows(res["results"], sizes)),
        "",
        *verdicts(res["ratios"], sizes),
        *([""] + [f"- failed run (retried once): {f}" for f in failures] if failures else []),
        "",
        common.info_block(info),
    ])
