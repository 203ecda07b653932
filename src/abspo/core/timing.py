"""Where the time and memory of a step go: seconds per phase, and measured intervals.

* :class:`PhaseClock`: wall-clock seconds per phase of a self-play step (rollouts, judge, scoring passes,
  gradient pass, optimizer). The module times its own phases so that a run's TensorBoard (``perf/<phase>_s``) and
  the benchmark (``benchmarks/bench_update.py``) read the same figures from the same code. On a GPU the clock
  synchronises the device at each phase boundary: kernels are asynchronous, and without it a phase would be
  charged for the previous one's work.
* :func:`measured`: an interval's wall time, the CPU cores *other* processes kept busy during it (``/proc/stat``
  minus this process's own time), and the peak RSS reached in it. The machines benchmarks run on are shared: a
  figure taken while another process was busy is not the same figure, so every benchmark and tool here prints the
  foreign load beside its times (Linux only).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

PHASES = ("rollout/attacker", "rollout/defender", "judge", "score/old", "score/anchor", "update/gradient",
          "update/optimizer")
"""The phases a step is split into, in the order they run (a phase that does not run this step is absent)."""


class PhaseClock:
    """Sums the seconds spent in each named phase until :meth:`take` hands them over and starts again."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            self.seconds[phase] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The seconds per phase since the last call (in :data:`PHASES` order, then any other), and reset."""
        out = {p: self.seconds[p] for p in PHASES if p in self.seconds}
        out.update({p: s for p, s in self.seconds.items() if p not in out})
        self.seconds.clear()
        return out


def synchronize() -> None:
    """Wait for the GPU's queued kernels (a no-op without CUDA): a timer stopped before them times nothing."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def proc_status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``...) in bytes."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_rss_reset() -> None:
    """Start a new peak-RSS interval (Linux: writing 5 to clear_refs resets ``VmHWM``)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def _busy_ticks() -> tuple[int, int]:
    """(clock ticks every CPU spent busy, ticks this process spent on a CPU), since boot."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    with open("/proc/self/stat", encoding="ascii") as fh:
        own = fh.read().rsplit(")", 1)[1].split()
    return sum(fields[:8]) - idle, int(own[11]) + int(own[12])  # utime + stime of every thread


@dataclass
class Interval:
    seconds: float = 0.0
    foreign_cores: float = 0.0
    """Average number of CPU cores that other processes kept busy during the interval."""
    peak_rss_mib: float = 0.0
    """Peak resident memory of this process during the interval."""


@contextmanager
def measured() -> Iterator[Interval]:
    """Time the block, with the foreign CPU load and the peak RSS during it (filled in when the block ends)."""
    out = Interval()
    peak_rss_reset()
    busy0, own0 = _busy_ticks()
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.seconds = time.perf_counter() - start
        busy1, own1 = _busy_ticks()
        ticks = os.sysconf("SC_CLK_TCK")
        out.foreign_cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / ticks / max(out.seconds, 1e-9)
        out.peak_rss_mib = proc_status_bytes("VmHWM") / 2**20


@dataclass
class TensorPeak:
    peak_mib: float = 0.0
    """The most memory tensors held at once during the interval, counted from 0 at its start: allocations add,
    frees subtract. The profiler sees the frees of tensors allocated before any profiling began as nothing, and
    those of tensors from an earlier :func:`tensor_peak` block (it keeps their sizes) as negative; so measure from
    before the work allocates anything (model included), or add an earlier block's :attr:`held_mib`."""
    held_mib: float = 0.0
    """Allocations less frees at the end of the interval (what a next block starts from; negative where the block
    freed more than it allocated)."""
    allocations: int = 0
    """Allocator events recorded (a check that the profiler saw the work)."""


@contextmanager
def tensor_peak(enabled: bool = True) -> Iterator[TensorPeak]:
    """The peak of tensor memory on the CPU during the block (filled in when it ends): every allocation and free
    of torch's CPU allocator as its profiler records them (``profile_memory``), summed in time order. It is the
    CPU counterpart of ``torch.cuda.max_memory_allocated``, the figure a GPU's "peak memory" means and the one
    ``abspo plan`` predicts. Peak RSS (:func:`measured`) also counts what is not a tensor: the interpreter and
    libraries (~450 MiB for torch + transformers, the same in every mode) and the pages the C heap keeps after a
    free. Every op is recorded, which slows the block (~10-20%) and holds the records in memory (GBs over a
    SmolLM2 training batch: the RSS of a process measured so is no figure). ``enabled=False`` measures nothing."""
    from torch._C._autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    out = TensorPeak()
    if not enabled:  # (a caller that measures something else this time)
        yield out
        return
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield out
    # at one timestamp, allocations before frees: the peak is not understated
    events = sorted((e.start_ns(), -e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, negative in events:
        live -= negative
        peak = max(peak, live)
    out.peak_mib, out.held_mib, out.allocations = peak / 2**20, live / 2**20, len(events)


def machine() -> dict[str, object]:
    """What a benchmark's figures depend on besides the code: CPU model and cores, whether it has x86's bf16
    matmul instructions (AVX512-BF16; None where that cannot be read, as off Linux), memory, GPU, library
    versions and the date. Written into every benchmark's JSON, so that a figure is never read against another
    machine's."""
    import datetime
    import importlib.metadata
    import platform

    facts: dict[str, object] = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
                                "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                                "cpu": platform.processor() or platform.machine(), "avx512_bf16": None}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            info = fh.read()
        facts["cpu"] = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                             if line.startswith("model name")), facts["cpu"])
        facts["avx512_bf16"] = " avx512_bf16" in info
    except OSError:  # not Linux
        pass
    try:
        facts["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, OSError, ValueError):  # Windows
        facts["memory_gib"] = None
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    for package in ("torch", "transformers", "peft", "trl"):
        try:
            facts[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return facts


def write_report(report: dict, path: str, machine_key: str = "machine") -> None:
    """A benchmark's report as JSON at ``path`` (folders made), with :func:`machine` under ``machine_key`` (a
    report that merges figures of several runs keeps each run's machine under its own key)."""
    import json
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**report, machine_key: machine()}, indent=2))
    print(f"\nwritten: {path}")
