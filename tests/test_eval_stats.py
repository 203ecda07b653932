"""Wilson intervals and proportions against values computed by hand (six digits, so compared to 1e-5).

With z = 1.959964, z² = 3.841459:
* 0/10: center = (0 + z²/2) / (10 + z²) = half-width, so [0, z² / (10 + z²)] = [0, 3.841459 / 13.841459] = [0, 0.277533].
* 5/10: center 0.5, half = z / 13.841459 * sqrt(5 * 5 / 10 + z²/4) = 0.141601 * 1.860206 = 0.263407 -> [0.236593, 0.763407].
* 10/10: the mirror of 0/10 -> [0.722467, 1].
* 2/3: center = (2 + 1.920729) / 6.841459 = 0.573081, half = 0.286481 * sqrt(2/3 + 0.960365) = 0.365422
  -> [0.207660, 0.938503].
"""

from __future__ import annotations

import pytest

from abspo.evaluation.stats import Proportion, proportion, wilson_interval


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.277533),
    (5, 10, 0.236593, 0.763407),
    (10, 10, 0.722467, 1.0),
    (2, 3, 0.207660, 0.938503),
])
def test_wilson_golden_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-5)


def test_wilson_edges_and_bad_input():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing observed: nothing known
    lo, hi = wilson_interval(1, 1_000_000)
    assert 0.0 <= lo < 1e-6 < hi < 1e-5
    for n in range(1, 2000):  # 0/n and n/n: exactly 0 and 1, whatever the rounding
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0, n
    for k, n in ((-1, 5), (6, 5), (0, -1)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)


def test_proportion_counts_none_as_unlabelled():
    p = proportion([True, False, None, True, None])
    assert (p.count, p.labelled, p.unlabelled, p.n) == (2, 3, 2, 5)
    assert p.rate == pytest.approx(2 / 3)
    assert p.ci95 == pytest.approx((0.207660, 0.938503), abs=1e-5)
    assert proportion([True, False, None], positive=False) == Proportion(1, 2, 1)
    d = p.as_dict()
    assert d == {"count": 2, "labelled": 3, "unlabelled": 2, "n": 5, "rate": pytest.approx(2 / 3),
                 "ci95": [pytest.approx(0.207660, abs=1e-5), pytest.approx(0.938503, abs=1e-5)]}
    assert p.short() == "66.7% (2/3)"
    assert p.long() == "66.7% (2/3) [20.8, 93.9], 2 unlabelled"


def test_empty_proportion_has_no_rate():
    p = proportion([None, None])
    assert p.rate is None and p.ci95 is None
    assert p.as_dict()["rate"] is None and p.as_dict()["ci95"] is None
    assert p.short() == "— (0/0)"
