"""The memory planner: its parameter counts equal the real models', its arithmetic equals hand counts, and it
reads a training config as `abspo fit` would."""

from __future__ import annotations

from dataclasses import replace

import pytest

from abspo.bank import AdapterBank, BankSpec, LoraSpec
from abspo.cli import main
from abspo.models import QWEN25_ARCHITECTURES, load_base, meta_model
from abspo.planner import Architecture, PlanInputs, architecture, inputs_from_config, plan_memory
from tests.conftest import TINY

TOY = Architecture(layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=100, tied_embeddings=True)


@pytest.mark.parametrize("name", sorted(QWEN25_ARCHITECTURES))
def test_base_parameter_count_equals_the_paper_scale_models(name):
    model = meta_model(name)
    assert architecture(name).base_params() == sum(p.numel() for p in model.parameters())


def test_base_and_lora_counts_equal_the_built_in_models():
    for cfg in (TINY, type(TINY)(name_or_path="smollm2-135m-instruct", dtype="float32")):
        base, _ = load_base(cfg)
        arch = architecture(cfg.name_or_path)
        assert arch.base_params() == sum(p.numel() for p in base.parameters()), cfg.name_or_path
        bank = AdapterBank(base, BankSpec(adapters={"attacker": LoraSpec(r=4), "defender": LoraSpec(r=8)}))
        assert arch.lora_params(4) == sum(p.numel() for p in bank.adapter_parameters("attacker"))
        assert arch.lora_params(8) == sum(p.numel() for p in bank.adapter_parameters("defender"))


def test_plan_arithmetic_by_hand():
    p = PlanInputs(arch=TOY, base_dtype="bfloat16", lora_ranks=[2], games=4, prompt_tokens=10,
                   new_tokens_attacker=5, new_tokens_defender=7, micro_batch_size=2, runtime_gib=0.0)
    plan = plan_memory(p)
    # head_dim 4, kv_dim 4; longest sequence = 10 + max(5, 7) = 17 tokens; 4 games on one device
    assert plan.phases["rollouts"]["KV cache"] == 2 * 2 * 4 * 2 * 17 * 4
    lora = 2 * 2 * (2 * (8 + 8) + 2 * (8 + 4) + 2 * (8 + 16) + (16 + 8))  # layers x r x sum(in + out)
    assert plan.persistent["LoRA weights (fp32)"] == lora * 4 and plan.persistent["AdamW moments (fp32)"] == lora * 8
    # 14 completion positions: bf16 logits + their gradient, and one float32 chunk (all 14 rows) x 3
    assert plan.phases["update"]["completion logits"] == 14 * 100 * 2 * 2 + 14 * 100 * 4 * 3
    assert plan.peak_bytes == plan.persistent_bytes + max(plan.phase_bytes(k) for k in plan.phases)


def test_modes_change_what_is_trained():
    p = PlanInputs(arch=TOY, base_dtype="bfloat16", lora_ranks=[2, 4], games=4, runtime_gib=0.0)
    both, shared = plan_memory(p), plan_memory(replace(p, mode="shared_lora"))
    full = plan_memory(replace(p, mode="shared_full"))
    assert shared.persistent["LoRA weights (fp32)"] == TOY.lora_params(2) * 4, "one adapter, the first spec"
    assert both.persistent["LoRA weights (fp32)"] == (TOY.lora_params(2) + TOY.lora_params(4)) * 4
    # a float32 trained copy of the base + its grads + AdamW moments, beside the frozen bf16 anchor
    assert full.persistent["policy weights (fp32)"] + full.persistent["policy grads (fp32)"] \
        + full.persistent["AdamW moments (fp32)"] == TOY.base_params() * 16
    assert full.persistent["base"] == both.persistent["base"] == TOY.base_params() * 2


def test_sharding_divides_base_and_lora_states_and_gathers_for_generation():
    one = plan_memory(PlanInputs(arch=TOY, devices=4, games=8))
    sharded = plan_memory(PlanInputs(arch=TOY, devices=4, games=8, sharded=True))
    for key in ("base", "LoRA weights (fp32)", "AdamW moments (fp32)"):
        assert sharded.persistent[key] == pytest.approx(one.persistent[key] / 4)
    assert sharded.phases["rollouts"]["gathered base (generation)"] == pytest.approx(one.persistent["base"] * 3 / 4)
    assert one.phases["rollouts"]["KV cache"] == sharded.phases["rollouts"]["KV cache"], "2 games per device either way"


def test_checkpointing_shrinks_activations_and_a_plan_that_does_not_fit_says_what_to_change():
    arch = architecture("Qwen/Qwen2.5-7B-Instruct")
    full = plan_memory(PlanInputs(arch=arch, micro_batch_size=8, device_memory_gib=40, games=64,
                                  new_tokens_attacker=512, new_tokens_defender=512))
    ckpt = plan_memory(PlanInputs(arch=arch, micro_batch_size=8, device_memory_gib=40, games=64,
                                  new_tokens_attacker=512, new_tokens_defender=512, activation_checkpointing=True))
    assert ckpt.phases["update"]["activations"] < full.phases["update"]["activations"] / 10
    assert full.fits is False and any("micro_batch_size" in a for a in full.advice())
    assert plan_memory(PlanInputs(arch=TOY, device_memory_gib=80)).fits


def test_inputs_follow_the_training_config():
    p = inputs_from_config(["configs/qwen2.5-7b.yaml"])
    assert (p.base_dtype, p.lora_ranks, p.games, p.micro_batch_size) == ("bfloat16", [32, 32], 128, 4)
    assert p.new_tokens_attacker == 512 and p.judge_params > 7e9 and not p.sharded
    assert inputs_from_config(["configs/tiny-ddp.yaml"]).devices == 2
    assert inputs_from_config(["configs/tiny.yaml"], devices=3).devices == 3


def test_plan_command_prints_the_table(capsys):
    main(["plan", "--config", "configs/qwen2.5-7b.yaml", "--device-memory-gib", "80", "--devices", "4"])
    out = capsys.readouterr().out
    assert "7.62B base parameters" in out and "32 games per device" in out and "peak" in out


def test_plan_command_names_a_missing_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--config", "configs/nope.yaml"])
    assert exit_info.value.code == 2 and "configs/nope.yaml" in capsys.readouterr().err


def test_plan_of_the_14b_fsdp_config_shards_the_base_and_fits_80_gib(capsys):
    main(["plan", "--config", "configs/qwen2.5-14b-fsdp.yaml", "--device-memory-gib", "80"])
    out = capsys.readouterr().out
    print(out)  # the figure, in the test log
    assert "14.77B base parameters" in out and "FSDP2 over 8" in out and ": fits" in out
    plan = plan_memory(inputs_from_config(["configs/qwen2.5-14b-fsdp.yaml"], device_memory_gib=80))
    assert plan.persistent["base"] == pytest.approx(architecture("Qwen/Qwen2.5-14B-Instruct").base_params() * 2 / 8)
