"""What the report's renderers share: the table style, and small text formatters (numbers,
durations, sparklines, bars, short column names)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

SPARK = "▁▂▃▄▅▆▇█"
SPARK_MAX = 16


def report_table(title: str | None = None) -> Table:
    """A report table: no vertical rules, so a narrow terminal keeps its columns for data."""
    return Table(title=Text(title) if title else None, title_justify="left", title_style="bold", header_style="bold",
                 box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1),
                 collapse_padding=True)


def short_names(keys: list[str]) -> dict[str, str]:
    """Compact column names: the last key component (``optim.lr`` -> ``lr``), with more
    components only where two keys would otherwise share a name."""
    depth = {k: 1 for k in keys}
    while True:
        names = {k: ".".join(k.split(".")[-depth[k]:]) for k in keys}
        clashes = [k for k in keys if list(names.values()).count(names[k]) > 1 and depth[k] < len(k.split("."))]
        if not clashes:
            return names
        for k in clashes:
            depth[k] += 1


def sparkline(values: list[float | None], scale: tuple[float, float] | None = None) -> str:
    """Unicode sparkline, at most ``SPARK_MAX`` characters (longer curves are averaged in buckets)."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) > SPARK_MAX:
        n = len(values)
        values = [sum(chunk) / len(chunk) for chunk in
                  (values[i * n // SPARK_MAX:(i + 1) * n // SPARK_MAX] for i in range(SPARK_MAX)) if chunk]
    lo, hi = scale or (min(values), max(values))
    if hi <= lo:
        return SPARK[len(SPARK) // 2] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, max(0, round((v - lo) / (hi - lo) * (len(SPARK) - 1))))]
                   for v in values)


def bar(fraction: float, width: int) -> str:
    eighths = max(0, round(fraction * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "") if eighths else "▏"


def fmt_num(value: Any) -> str:
    """Four significant digits in fixed point where that reads well; ints stay ints."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    a = abs(value)
    if 1e-3 <= a < 1e6:
        return f"{value:.{max(0, 3 - math.floor(math.log10(a)))}f}"
    return f"{value:.3g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def local_time(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone()
