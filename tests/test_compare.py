"""`abspo compare` end to end on the tiny model: every mode trained on one game budget, cross-played, reported."""

from __future__ import annotations

import json

import pytest
import yaml

from abspo.cli import main


@pytest.mark.slow
def test_compare_trains_each_mode_then_cross_plays_and_reports(tmp_path, capsys):
    out = tmp_path / "cmp"
    own = tmp_path / "diagnostics.yaml"  # a config with its own CollapseDiagnostics, as configs/smollm2-cpu.yaml has
    own.write_text("trainer:\n  callbacks:\n    - class_path: abspo.callbacks.CollapseDiagnostics\n"
                   "      init_args: {every_n_batches: 10}\n")
    args = ["compare", "--out", str(out), "--train_config", f"[configs/tiny.yaml,{own}]",
            "--modes", "[bipolicy,shared_lora]", "--batches", "2", "--diagnostics_every", "1", "--protocol.n_seeds", "3",
            "--fit_args", "[\"--model.game.max_new_tokens_defender\", \"5\"]"]
    main(args)
    report = json.loads((out / "report.json").read_text())
    resolved = yaml.safe_load((out / "runs" / "bipolicy" / "tb" / "config.yaml").read_text())
    diagnostics = [c for c in resolved["trainer"]["callbacks"] if c["class_path"].endswith("CollapseDiagnostics")]
    assert [c["init_args"]["every_n_batches"] for c in diagnostics] == [1], "the config's own, at compare's cadence"
    crossplayed = json.loads((out / "crossplay" / "crossplay.json").read_text())
    assert crossplayed["generation"]["max_new_tokens_defender"] == 5, "cross-play plays the game the runs trained on"
    for mode, steps in (("bipolicy", 4), ("shared_lora", 2)):  # one game budget: 2 batches, whatever the steps
        run = report["modes"][mode]
        assert f"max_steps={steps}` reached" in (out / "runs" / f"{mode}.log").read_text()
        assert run["peak_rss_bytes"] > 100 * 2**20 and run["median_step_s"] > 0
        assert {"game/attack_success_rate", "diag/pressure_vs_base", "diag/grad_cos_probe"} <= set(run["final"])
    lora = report["modes"]["bipolicy"]["trainable_params"]
    assert report["modes"]["shared_lora"]["trainable_params"] * 2 == lora, "one adapter where bipolicy has two"
    asr = report["crossplay"]["attack_success_rate"]
    assert list(asr) == ["vanilla", "base", "bipolicy", "shared_lora"]
    assert all(list(row) == ["base", "bipolicy", "shared_lora"] for row in asr.values())
    assert all(cell["n"] == 3 for row in asr.values() for cell in row.values())
    text = (out / "report.md").read_text()
    assert "| shared_lora |" in text and "curves-pressure.png" in text
    for name in ("game", "pressure", "alignment", "diversity"):
        assert (out / f"curves-{name}.png").stat().st_size > 1000
    # Repeated with the same settings, the finished runs are reused (not trained again).
    stamp = (out / "runs" / "bipolicy" / "compare_run.json").stat().st_mtime_ns
    main(args)
    assert (out / "runs" / "bipolicy" / "compare_run.json").stat().st_mtime_ns == stamp


def test_compare_names_a_bad_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--out", str(tmp_path), "--train_config", "[configs/nope.yaml]"])
    assert exit_info.value.code == 2
    assert "train_config[0]" in capsys.readouterr().err


def test_median_step_is_the_median_of_an_even_count_too():
    from abspo.evaluation.compare import median_step

    assert median_step({"perf/step_s": [(0, 10.0), (1, 100.0), (2, 20.0), (3, 30.0)]}) == 25.0
    assert median_step({"perf/step_s": [(0, 20.0), (1, 10.0), (2, 30.0)]}) == 20.0
    assert median_step({}) is None
