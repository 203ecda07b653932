"""Proportions with Wilson 95% intervals, and the exact McNemar test for two defenders on the same prompts.

Every safety figure is a proportion of a few dozen to a few hundred judged exchanges (attacks that worked,
benign prompts refused), so its sampling error is large and must travel with it: 3/30 is "10%, somewhere
between 3% and 26%". The Wilson score interval is used instead of the textbook normal (Wald) interval
because it stays inside [0, 1] and keeps close to its nominal 95% coverage at 0/n, n/n and small n,
which is exactly where red-teaming rates live (a good defender has an ASR near 0).

Two defenders answering the *same* prompts are not two independent samples: most prompts get the same outcome
from both, and only the prompts where they differ (the discordant pairs) say which is better. The exact McNemar
test asks whether those split evenly; it can find a difference that two overlapping Wilson intervals cannot.

Everything here is a pure function of integers, so it is tested against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

Z95 = 1.959963984540054
"""The 97.5% quantile of the standard normal: a two-sided 95% interval."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    ``center = (k + z²/2) / (n + z²)``, ``half = z / (n + z²) * sqrt(k (n - k) / n + z²/4)``. With ``n = 0``
    nothing is known and the interval is the whole of [0, 1].
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    z2 = z * z
    denom = n + z2
    center = (successes + z2 / 2) / denom
    half = z / denom * math.sqrt(successes * (n - successes) / n + z2 / 4)
    # 0/n and n/n give exactly 0 and 1 on paper; floating point lands on either side of them.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


@dataclass(frozen=True)
class Proportion:
    """``count`` of ``labelled`` exchanges had the property; ``unlabelled`` more could not be judged.

    Unlabelled exchanges (the judge said ``None``) are excluded from the rate, never guessed, and reported
    beside it, so that a judge failing on the hard cases cannot silently flatter a defender.
    """

    count: int
    labelled: int
    unlabelled: int = 0

    @property
    def n(self) -> int:
        """Every exchange asked about, labelled or not."""
        return self.labelled + self.unlabelled

    @property
    def rate(self) -> float | None:
        return self.count / self.labelled if self.labelled else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        return wilson_interval(self.count, self.labelled) if self.labelled else None

    def as_dict(self) -> dict:
        ci = self.ci95
        return {"count": self.count, "labelled": self.labelled, "unlabelled": self.unlabelled, "n": self.n,
                "rate": self.rate, "ci95": list(ci) if ci else None}

    def short(self) -> str:
        """``'40.0% (12/30)'``; ``'— (0/0)'`` when nothing was labelled."""
        rate = "—" if self.rate is None else f"{100 * self.rate:.1f}%"
        return f"{rate} ({self.count}/{self.labelled})"

    def long(self) -> str:
        """``'40.0% (12/30) [24.6, 57.7]'``, with ``', 2 unlabelled'`` when some were."""
        ci = self.ci95
        text = self.short() + ("" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")
        return text + (f", {self.unlabelled} unlabelled" if self.unlabelled else "")


def proportion(labels: Iterable[bool | None], positive: bool = True) -> Proportion:
    """Count labels equal to ``positive`` among the non-``None`` ones; ``None`` counts as unlabelled."""
    count = labelled = unlabelled = 0
    for label in labels:
        if label is None:
            unlabelled += 1
        else:
            labelled += 1
            count += label == positive
    return Proportion(count, labelled, unlabelled)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs (``only_first`` prompts where the first defender had
    the outcome and the second did not, ``only_second`` the other way) against an even split, a binomial test at
    1/2: ``min(1, 2 * P[X <= min(b, c)])`` for X ~ Binomial(b + c, 1/2). 1.0 when no pair is discordant."""
    if only_first < 0 or only_second < 0:
        raise ValueError(f"need counts >= 0, got {only_first}, {only_second}")
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2**n
    return min(1.0, 2 * tail)
