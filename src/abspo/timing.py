"""Wall-clock seconds per phase of a self-play step (rollouts, judge, scoring passes, gradient pass, optimizer).

The module times its own phases so that a run's TensorBoard (``perf/<phase>_s``) and the benchmark harness
(``benchmarks/bench_update.py``) read the same figures from the same code. On a GPU the clock synchronises the
device at each phase boundary: kernels are asynchronous, and without it a phase would be charged for the
previous one's work.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

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
        _synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self.seconds[phase] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The seconds per phase since the last call (in :data:`PHASES` order, then any other), and reset."""
        out = {p: self.seconds[p] for p in PHASES if p in self.seconds}
        out.update({p: s for p, s in self.seconds.items() if p not in out})
        self.seconds.clear()
        return out


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
