"""`abspo test`: the safety report of a run's defender, from its checkpoint, through the CLI."""

from __future__ import annotations

import json

import torch

from abspo.cli import cli_main

SMALL = ["--eval.limit", "2", "--eval.templates", "1", "--eval.behaviours", "2",
         "--model.game.max_new_tokens_defender", "8"]


def test_abspo_test_reports_on_the_checkpointed_defender(tmp_path):
    cli_main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--trainer.max_steps", "2"])
    cli = cli_main(["test", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path),
                    "--ckpt_path", "last", *SMALL])
    checkpoint = torch.load(tmp_path / "tiny" / "checkpoints" / "last.ckpt", weights_only=True)
    loaded = dict(cli.model.named_parameters())
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(loaded[name], value), f"{name} was not loaded from the checkpoint"
    out = tmp_path / "tiny" / "eval" / "step-2"
    report = json.loads((out / "report.json").read_text())
    assert set(report["benchmarks"]) == {"harmbench", "jailbreak", "overrefusal", "benign"}
    exchanges = [json.loads(line) for line in (out / "exchanges.jsonl").read_text().splitlines()]
    assert len(exchanges) == sum(b["prompts"] for b in report["benchmarks"].values()) == 2 + 2 + 2 + 2
    assert "attack_success_rate" in (out / "report.md").read_text()


def test_bad_eval_setting_names_the_eval_key(tmp_path, capsys):
    import pytest

    from abspo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--eval.benchmarks", "[nope]"])
    assert exit_info.value.code == 2
    assert "eval.benchmarks" in capsys.readouterr().err
