"""Every shipped config parses; the paper-scale ones instantiate on the meta device with the right sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from abspo.cli import cli_main
from abspo.judges import WildGuardJudge
from abspo.weights.models import QWEN25_ARCHITECTURES

CONFIGS = sorted(Path("configs").glob("*.yaml"))
OVERLAYS = {"forgetting-demo.yaml": "configs/smollm2-cpu.yaml", "smollm2-learn.yaml": "configs/smollm2-cpu.yaml"}
"""Configs meant to be stacked on another one (``--config base.yaml --config overlay.yaml``)."""


def lora_params_per_layer(arch: dict, r: int) -> int:
    """Hand count: LoRA adds r * (in + out) per adapted linear layer (q, k, v, o, gate, up, down)."""
    h, i = arch["hidden_size"], arch["intermediate_size"]
    kv = h // arch["num_attention_heads"] * arch["num_key_value_heads"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    return sum(r * (a + b) for a, b in shapes)


def test_all_configs_are_found():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "smollm2-cpu.yaml", "qwen2.5-3b.yaml", "qwen2.5-7b.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config, capsys):
    stack = ["--config", OVERLAYS[config.name]] if config.name in OVERLAYS else []
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *stack, "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    assert "name_or_path" in capsys.readouterr().out


@pytest.mark.parametrize("config, hub_id", [("configs/qwen2.5-3b.yaml", "Qwen/Qwen2.5-3B-Instruct"),
                                            ("configs/qwen2.5-7b.yaml", "Qwen/Qwen2.5-7B-Instruct"),
                                            ("configs/qwen2.5-7b-ddp.yaml", "Qwen/Qwen2.5-7B-Instruct"),
                                            ("configs/qwen2.5-14b-fsdp.yaml", "Qwen/Qwen2.5-14B-Instruct")])
def test_paper_scale_config_instantiates_on_meta(config, hub_id):
    cli = cli_main(["--config", config, "--model.meta_device", "true", "--trainer.accelerator", "cpu",
                    "--trainer.devices", "1", "--trainer.strategy", "auto"], run=False)
    module = cli.model
    arch = QWEN25_ARCHITECTURES[hub_id]
    expected = lora_params_per_layer(arch, r=32) * arch["num_hidden_layers"]
    counts = module.trainable_parameter_count()
    assert counts["attacker"] == counts["defender"] == expected
    assert counts["base"] / expected > 50, "one role trains ~1/50 (3B) to ~1/100 (14B) of the base"
    assert all(p.device.type == "meta" for _, p in module.bank.base_parameters())
    assert isinstance(module.judge, WildGuardJudge)
    assert cli.datamodule.batch_size == 128
    assert module.game.defender_reasoning


def test_forgetting_demo_overlay_keeps_the_main_job_and_stops_on_a_drop():
    cli = cli_main(["--config", "configs/smollm2-cpu.yaml", "--config", "configs/forgetting-demo.yaml",
                    "--model.base.name_or_path", "tiny-qwen2"], run=False)
    from abspo.callbacks import ReasoningRetention

    (retention,) = [c for c in cli.trainer.callbacks if isinstance(c, ReasoningRetention)]
    assert retention.on_violation == "stop" and retention.every_n_steps == 2
    assert cli.model.optim_cfg["defender"].lr == pytest.approx(400 * 1e-4)  # 400x the main job's defender
    assert cli.model.optim_cfg["attacker"].lr == pytest.approx(2e-4)  # the main job's attacker
    assert cli.model.algorithm.kl_coef == 0.0 and cli.datamodule.batch_size == 8  # the rest is the main job's
