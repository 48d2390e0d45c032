"""Run every speed benchmark (``make bench``); each writes its own section of RESULTS.md.

Each benchmark runs in its own process (``python -m benchmarks.speed.<name>``), one after the
other, so that thread settings, the allocator, imports and Ray of one do not colour the next, and
one failing does not stop the rest. About 12-15 minutes on 2 cores.

    python -m benchmarks.speed.run_all                    # everything
    python -m benchmarks.speed.run_all --only pipeline    # some of them
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.harness import common

SCRIPTS = {  # name -> module (run in this order)
    "step_cost": "benchmarks.speed.step_cost",
    "pipeline": "benchmarks.speed.pipeline",
    "ray_overhead": "benchmarks.speed.ray_overhead",
    "montage_scope": "benchmarks.speed.montage_scope",
    "sweep_efficiency": "benchmarks.speed.sweep_efficiency",
    "profile_step": "benchmarks.speed.profile_step",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the jigclu speed benchmarks")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=None)
    args = parser.parse_args(argv)
    chosen = [name for name in SCRIPTS if args.only is None or name in args.only]
    status = []
    total = time.perf_counter()
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", SCRIPTS[name]], cwd=common.REPO_ROOT)
        status.append((name, "ok" if proc.returncode == 0 else f"[bold red]failed ({proc.returncode})[/]",
                       common.fmt_s(time.perf_counter() - start)))
    common.print_table(f"Benchmarks run in {common.fmt_s(time.perf_counter() - total)}; "
                       f"results in benchmarks/RESULTS.md", ["script", "status", "time"], status)
    return 0 if all(s[1] == "ok" for s in status) else 1


if __name__ == "__main__":
    sys.exit(main())
