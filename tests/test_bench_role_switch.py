"""benchmarks/bench_role_switch.py: a frozen starting adapter's switch time and memory, on the tiny model."""

from __future__ import annotations

from benchmarks.bench_role_switch import main


def test_the_frozen_start_is_a_sliver_of_the_base_and_every_switch_is_timed(tmp_path):
    report = main(["--base", "tiny-qwen2", "--rounds", "1", "--switches", "5", "--out", str(tmp_path / "r.json")])
    assert set(report["switch_us"]) == {"role, no start", "anchor = base", "role, warm start", "anchor = frozen start"}
    assert all(us > 0 for us in report["switch_us"].values())
    assert 0 < report["frozen_start_mib"] < 0.05 * report["base_mib"]
    assert (tmp_path / "r.json").exists()
