"""What every benchmark here measures the same way: wall time with the foreign CPU load it ran under, peak RSS of
an interval, and medians.

The machines these run on are shared. A figure taken while another process was busy is not the same figure, so
every timed interval also records how many CPU cores *other* processes kept busy during it (from ``/proc/stat``
minus this process's own time from ``/proc/self/stat``); tables print it beside the times.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> tuple[int, int]:
    """(ticks every CPU spent busy, ticks this process spent on a CPU), since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return sum(fields[:8]) - idle, int(own[11]) + int(own[12])  # utime + stime of every thread


def peak_rss_reset() -> None:
    """Start a new peak-RSS interval (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """Peak resident memory of this process since the last :func:`peak_rss_reset`, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Interval:
    seconds: float = 0.0
    foreign_cores: float = 0.0
    """Average number of CPU cores that other processes kept busy during the interval."""
    peak_rss_mib: float = 0.0


@contextmanager
def measured() -> Iterator[Interval]:
    """Time the block, with the foreign CPU load and the peak RSS during it."""
    out = Interval()
    peak_rss_reset()
    busy0, own0 = _busy_ticks()
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.seconds = time.perf_counter() - start
        busy1, own1 = _busy_ticks()
        out.foreign_cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / CLOCK_TICKS / max(out.seconds, 1e-9)
        out.peak_rss_mib = peak_rss_mib()


@dataclass
class Series:
    """Per-step rows of one system; medians over the rows."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)

    def median(self) -> dict[str, float]:
        keys = [k for k in self.rows[0] if all(k in r for r in self.rows)]
        return {k: statistics.median(r[k] for r in self.rows) for k in keys}

    def max(self, key: str) -> float:
        return max(r[key] for r in self.rows)
