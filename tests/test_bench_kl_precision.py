"""benchmarks/bench_kl_precision.py: the KL's rounding floor per arithmetic, on the tiny model."""

from __future__ import annotations

import pytest

from benchmarks.bench_kl_precision import main


def test_float32_arithmetic_reads_the_kl_of_the_float32_copy(tmp_path):
    report = main(["--model", "tiny-qwen2", "--rows", "3", "--new-tokens", "20", "--rounds", "1", "--scale", "1e-5",
                   "--json", str(tmp_path / "kl.json")])
    kl = report["kl"]
    assert kl["float32"]["k3_per_token"] == pytest.approx(kl["exact"]["k3_per_token"], rel=1e-3)
    assert kl["model"]["mean_abs_log_ratio"] > 5 * kl["float32"]["mean_abs_log_ratio"] > 0, kl
    assert all(s > 0 for s in report["seconds"].values()) and (tmp_path / "kl.json").exists()
