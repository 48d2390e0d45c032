"""Shared helpers of the speed benchmarks: interleaved timing, machine info, RESULTS.md sections.

Every figure the benchmarks report is a ratio of two things timed in the same process,
interleaved (one round runs each contender once, in a rotating order) and summarised by the
median over rounds of the per-round ratio. Load from other processes then hits both sides of
a ratio alike, so the figure holds on a busy 2-core machine where absolute times do not.

``benchmarks/RESULTS.md`` holds one ``## Section`` per benchmark script. A script replaces only
its own section (:func:`write_section`) and keeps every other one, including sections other
scripts write (``## Quality`` comes from ``benchmarks/quality/quality.py``).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from jigclu.storage import write_atomic

BENCH_DIR = Path(__file__).resolve().parents[1]  # benchmarks/: RESULTS.md and the figures it links
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"

# Preferred order of sections in RESULTS.md; sections not listed (someone else's) keep their
# place, new ones go before the first listed section that follows them, else at the end.
SECTION_ORDER = ("Step cost", "Data pipeline", "Ray overhead", "Sweep efficiency", "Step profile", "Quality")

HEADER = """# jigclu benchmarks

Written by `make bench` (`python -m benchmarks.speed.run_all`); each `## Section` comes from one module
under `benchmarks/` and can be refreshed alone (`python -m benchmarks.<group>.<module>`). Ratios are medians
of per-round ratios of contenders timed interleaved in one process, so they hold on a busy
machine; absolute times are for orientation only.
"""


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timings:
    """Seconds per round of each contender, plus free-form extra measurements per round."""

    times: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, num: str, den: str) -> Ratio:
        """Median over rounds of ``num / den`` (each round's pair was timed back to back)."""
        return Ratio.of([a / b for a, b in zip(self.times[num], self.times[den])])

    @property
    def rounds(self) -> int:
        return min((len(v) for v in self.times.values()), default=0)


@dataclass(frozen=True)
class Ratio:
    """A median of per-round ratios with its spread (min and max over rounds)."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Ratio:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.low:.2f}-{self.high:.2f})"


def interleaved(contenders: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                extra: Callable[[str, Any, Timings], None] | None = None,
                on_round: Callable[[int], None] | None = None) -> Timings:
    """Time each contender once per round, ``rounds`` times, rotating the order every round.

    ``warmup`` untimed rounds come first (allocator, caches, lazy initialisation). ``extra``,
    when given, is called after each timed call as ``extra(name, returned_value, timings)`` to
    record measurements taken inside the call (e.g. the share of a sub-step).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    out = Timings({name: [] for name in names})
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            value = contenders[name]()
            out.times[name].append(time.perf_counter() - start)
            if extra is not None:
                extra(name, value, out)
        if on_round is not None:
            on_round(r)
    return out


def calibrate(fn: Callable[[], Any], min_seconds: float) -> int:
    """How many back-to-back calls of ``fn`` take at least ``min_seconds`` (>= 1)."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(min_seconds / once + 0.999))


def repeat(fn: Callable[[], Any], times: int) -> Callable[[], Any]:
    """``fn`` called ``times`` times per call (to time very short operations)."""
    def run() -> Any:
        value = None
        for _ in range(times):
            value = fn()
        return value
    return run


# ---------------------------------------------------------------------------------------------
# Machine and run description


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return None


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def command_line() -> str:
    """The command that ran this benchmark: ``python -m benchmarks.<group>.<module> ARGS``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:  # python -m NAME
        name = spec.name.removesuffix(".__main__")
    else:
        script = Path(sys.argv[0]).resolve()
        try:
            name = ".".join(script.relative_to(REPO_ROOT).with_suffix("").parts)
        except ValueError:
            name = script.stem
    return " ".join(["python", "-m", name, *map(shlex.quote, sys.argv[1:])])


def machine_info(threads: int | str | None = None) -> dict[str, str]:
    """What a reader needs to place the numbers: CPU, cores, memory, threads, versions, date."""
    import torch

    mem = _memory_gib()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    info = {
        "machine": f"{_cpu_model()}, {os.cpu_count()} logical CPUs"
                   + (f", {mem:.0f} GiB RAM" if mem else "") + f", {platform.system()} {platform.machine()}",
        "threads": str(threads if threads is not None else torch.get_num_threads()),
        "versions": (f"python {platform.python_version()}, torch {torch.__version__}, "
                     f"torchvision {_version('torchvision')}, ray {_version('ray')}, optuna {_version('optuna')}, "
                     f"pillow {_version('pillow')}, jigclu {_version('jigclu')}"),
        "command": command_line(),
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
    if load is not None:
        info["load average (1 min)"] = f"{load[0]:.2f} at start"
    return info


def finish_info(info: dict[str, str]) -> dict[str, str]:
    """Add the load average at the end: other processes' load is what makes absolute times drift."""
    if "load average (1 min)" in info and hasattr(os, "getloadavg"):
        info["load average (1 min)"] += f", {os.getloadavg()[0]:.2f} at end ({os.cpu_count()} logical CPUs)"
    return info


def info_block(info: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in info.items())


# ---------------------------------------------------------------------------------------------
# Output: rich tables on the terminal, markdown in RESULTS.md


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], note: str | None = None) -> None:
    """A compact rich table (plain text when rich is missing)."""
    rows = [list(map(str, row)) for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        print(title)
        print(markdown_table(columns, rows))
        return
    table = Table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    # wide enough for the tables even when stdout is a pipe (rich assumes 80 columns then)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    if note:
        console.print(note, style="dim")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path``'s directory (scripts writing RESULTS.md at once).

    The directory, not the file: the file is replaced by a rename, and a lock file would be one
    more file in the repository.
    """
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


_FENCE = re.compile(r"^\s*(```|~~~)")


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``(preamble, [(title, body), ...])`` of a markdown file, split at level-2 headings.

    ``body`` includes the heading line. Headings inside fenced code blocks do not count.
    """
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            sections.append((line[3:].strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), [(title, "".join(body)) for title, body in sections]


def replace_section(text: str, title: str, body: str) -> str:
    """``text`` with section ``## title`` set to ``body`` (a heading is added); others kept."""
    preamble, sections = split_sections(text)
    new = f"## {title}\n\n{body.strip()}\n\n"
    titles = [t for t, _ in sections]
    if title in titles:
        sections[titles.index(title)] = (title, new)
    else:
        rank = {t: i for i, t in enumerate(SECTION_ORDER)}
        mine = rank.get(title, len(SECTION_ORDER))
        at = next((i for i, t in enumerate(titles) if rank.get(t, -1) > mine), len(sections))
        sections.insert(at, (title, new))
    if not preamble.strip():
        preamble = HEADER + "\n"
    body_text = "".join(b if b.endswith("\n\n") else b.rstrip("\n") + "\n\n" for _, b in sections)
    return preamble.rstrip("\n") + "\n\n" + body_text.rstrip("\n") + "\n"


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or add) ``## title`` in ``path``, keeping every other section, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        old = path.read_text() if path.exists() else ""
        write_atomic(path, replace_section(old, title, body))


def scrub(text: str) -> str:
    """``text`` without this machine's paths (repository, temp and home directories)."""
    import tempfile

    for path, name in ((str(REPO_ROOT), "<repo>"), (tempfile.gettempdir(), "<tmp>"), (str(Path.home()), "~")):
        text = text.replace(path, name)
    return text


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def fmt_s(seconds: float) -> str:
    return f"{seconds:,.1f} s"


def verdict(ok: bool, rich: bool = False) -> str:
    """Target verdict: bold in markdown, coloured on the terminal."""
    if rich:
        return "[green]met[/]" if ok else "[bold red]missed[/]"
    return "met" if ok else "**missed**"


def progress(msg: str) -> None:
    """One dim progress line on stderr (benchmarks run for minutes)."""
    print(f"  .. {msg}", file=sys.stderr, flush=True)
