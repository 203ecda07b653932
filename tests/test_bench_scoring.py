"""benchmarks/bench_scoring.py: both scoring paths timed and measured on one micro-batch."""

from __future__ import annotations

from benchmarks.bench_scoring import main


def test_the_head_path_allocates_less_than_the_logits_path(tmp_path):
    """On the tiny model (SmolLM2's 49k vocabulary, hidden 64) the logits dominate a pass: scoring in the head
    keeps none of them."""
    report = main(["--model", "tiny-qwen2", "--dtypes", "float32", "--rows", "3", "--new-tokens", "40",
                   "--rounds", "1", "--json", str(tmp_path / "scoring.json")])
    row = report["dtypes"]["float32"]
    for path in ("logits", "head"):
        assert row[path]["gradient_s"] > 0 and row[path]["no-grad_s"] > 0
    # logits path: 3 x 40 x 49,152 float32 logits (22.5 MiB) and their gradient
    assert row["logits"]["gradient_peak_mib"] > 40
    assert row["ratios"]["gradient_peak head/logits"] < 0.6, row
    assert (tmp_path / "scoring.json").exists()
