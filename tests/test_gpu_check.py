"""tools/gpu_check.py, the script a lent GPU runs, as a CPU dry run: the same code path with tiny shapes."""

from __future__ import annotations

import pytest

from tools.gpu_check import main


@pytest.mark.slow
def test_gpu_check_dry_run_plays_judges_and_updates_both_roles(tmp_path):
    row, decoding = main(["--tiny", "--json", str(tmp_path / "gpu.json")])
    assert row["updated"] == ["attacker/grad_norm", "defender/grad_norm"], "the random judge's labels let both learn"
    assert row["generated_tokens"] > 0 and row["judge_s"] > 0 and row["update_s"] > 0
    assert row["planned_gib"] > 0 and (tmp_path / "gpu.json").is_file()
    # micro-batches capped in tokens: 8 longest turns (no device memory to fit), each 256 + 8 + 8 tokens
    assert (row["turns"], row["micro_batch_tokens"], row["micro_batch_size"]) == (8, 8 * 272, 32)
    options = decoding["decoding"]
    assert set(options) == {"dynamic", "static"} and all(o["same"] == 1.0 and o["tokens"] > 0 for o in options.values())
