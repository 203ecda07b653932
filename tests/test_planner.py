"""The memory planner: its parameter counts equal the real models', its arithmetic equals hand counts, and it
reads a training config as `abspo fit` would."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.cli import main
from abspo.weights.models import QWEN25_ARCHITECTURES, load_base, meta_model
from abspo.training.planner import Architecture, PlanInputs, architecture, inputs_from_config, plan_memory, targets_head
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
    # 14 completion positions, scored in the head: one chunk (all 14 rows) of bf16 logits + 3 float32 tensors
    assert plan.phases["update"]["completion logits"] == 14 * 100 * (2 + 4 * 3)
    # scored from the model's logits: bf16 logits + their gradient, and one float32 chunk (all 14 rows) x 3
    plain = plan_memory(replace(p, arch=replace(TOY, fused_head=False)))
    assert plain.phases["update"]["completion logits"] == 14 * 100 * 2 * 2 + 14 * 100 * 4 * 3
    # a LoRA'd LM head: its r x (hidden + vocab) weights, and the plain path's logits
    head = plan_memory(replace(p, head_adapters=[True]))
    assert head.persistent["LoRA weights (fp32)"] == (lora + 2 * (8 + 100)) * 4
    assert head.phases["update"]["completion logits"] == plain.phases["update"]["completion logits"]
    two = replace(p, lora_ranks=[2, 4], head_adapters=[False, True])
    assert plan_memory(two).persistent["LoRA weights (fp32)"] == (lora * 3 + 4 * (8 + 100)) * 4, "only the adapter on it"
    # a cap of 20 tokens: two 17-token rows pad to 34, over it, but two 10-token rows (3-token prompts and
    # 7-token completions) fit, so the largest micro-batch holds 20 tokens and still 14 completion positions
    capped = plan_memory(replace(p, micro_batch_tokens=20))
    assert capped.phases["update"]["activations"] * 34 == plan.phases["update"]["activations"] * 20
    assert capped.phases["update"]["completion logits"] == plan.phases["update"]["completion logits"]
    assert plan_memory(replace(p, micro_batch_tokens=34)).phases == plan.phases
    # a cap of 5: every row runs alone, the longest at 17 tokens, 7 of them completion
    alone = plan_memory(replace(p, micro_batch_tokens=5))
    assert alone.phases["update"]["activations"] * 2 == plan.phases["update"]["activations"]
    assert alone.phases["update"]["completion logits"] == 7 * 100 * (2 + 4 * 3)
    assert plan.peak_bytes == plan.persistent_bytes + max(plan.phase_bytes(k) for k in plan.phases)
    # float32 KL passes on a bf16 base: the LM head widened (100 x 8), one float32 chunk of logits x 3
    precise = plan_memory(replace(p, float32_kl=True)).phases["KL passes (float32)"]
    assert precise == {"float32 LM head": 100 * 8 * 4, "float32 logits chunk": 14 * 100 * 4 * 3}
    assert "KL passes (float32)" not in plan_memory(replace(p, float32_kl=True, base_dtype="float32")).phases


def test_modes_change_what_is_trained():
    p = PlanInputs(arch=TOY, base_dtype="bfloat16", lora_ranks=[2, 4], games=4, runtime_gib=0.0)
    both, shared = plan_memory(p), plan_memory(replace(p, mode="shared_lora"))
    full = plan_memory(replace(p, mode="shared_full"))
    assert shared.persistent["LoRA weights (fp32)"] == TOY.lora_params(2) * 4, "one adapter, the first spec"
    assert both.persistent["LoRA weights (fp32)"] == (TOY.lora_params(2) + TOY.lora_params(4)) * 4
    # a float32 trained copy of the base + its grads + AdamW moments, beside the frozen bf16 anchor
    assert full.persistent["policy weights (fp32)"] + full.persistent["policy grads (fp32)"] \
        + full.persistent["AdamW moments (fp32)"] == TOY.base_params() * 16
    assert both.persistent["base"] == TOY.base_params() * 2 and full.persistent["base"] == TOY.base_params() * 4


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
    capped = plan_memory(replace(full.inputs, micro_batch_tokens=5120))
    assert any("micro_batch_tokens (now 5120;" in a for a in capped.advice()), "the cap is the lever to lower"
    alone = plan_memory(replace(full.inputs, micro_batch_tokens=1000, device_memory_gib=10))
    assert alone.fits is False and not any("micro_batch" in a for a in alone.advice()), "rows already run alone"
    assert plan_memory(PlanInputs(arch=TOY, device_memory_gib=80)).fits


def test_inputs_follow_the_training_config():
    p = inputs_from_config(["configs/qwen2.5-7b.yaml"])
    assert (p.base_dtype, p.lora_ranks, p.games, p.micro_batch_size, p.micro_batch_tokens) == (
        "bfloat16", [32, 32], 128, 8, 3840)
    assert p.new_tokens_attacker == 512 and p.judge_params > 7e9 and not p.sharded
    assert inputs_from_config(["configs/tiny-ddp.yaml"]).devices == 2
    assert inputs_from_config(["configs/tiny.yaml"], devices=3).devices == 3


@pytest.mark.parametrize("targets, adapted", [
    ("all-linear", False), (["q_proj", "v_proj"], False), (["q_proj", "lm_head"], True),
    (["model.lm_head"], False), (r".*_proj|lm_head", True), (r".*_proj", False), (["my_lm_head"], False)])
def test_an_adapter_on_the_lm_head_and_a_token_cap_are_read_from_the_config(tmp_path, targets, adapted):
    config = tmp_path / "head.yaml"
    config.write_text(yaml.safe_dump({"model": {"base": {"name_or_path": "tiny-qwen2"}, "bank": {"adapters": {
        "attacker": {"r": 4}, "defender": {"r": 4, "target_modules": targets}}},
        "algorithm": {"micro_batch_tokens": 300, "kl_precision": "float32"}}}))
    assert targets_head(targets) is adapted
    inputs = inputs_from_config([str(config)])
    assert inputs.head_adapters == [False, adapted] and inputs.micro_batch_tokens == 300 and inputs.float32_kl


def test_plan_command_can_lift_the_configs_token_cap(capsys):
    main(["plan", "--config", "configs/qwen2.5-7b.yaml", "--micro-batch-tokens", "none"])
    lifted = capsys.readouterr().out
    main(["plan", "--config", "configs/qwen2.5-7b.yaml", "--micro-batch-tokens", "5120"])
    assert "micro-batch 8\n" in lifted and "(at most 5120 tokens)" in capsys.readouterr().out


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


def saved_bytes_per_token_layer(dtype, r: int) -> float:
    """What autograd keeps per token and decoder layer in abspo's gradient pass, measured: the bytes of the unique
    non-parameter storages saved for backward (saved-tensor hooks), a 2-layer model less a 1-layer one, over a
    left-padded batch as abspo scores."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from abspo.rl.rollout import build_scoring_batch, completion_logprobs

    def saved(layers: int) -> int:
        torch.manual_seed(0)
        cfg = Qwen2Config(hidden_size=64, intermediate_size=176, num_hidden_layers=layers, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=100, max_position_embeddings=128,
                          attn_implementation="sdpa")
        base = Qwen2ForCausalLM(cfg).to(dtype).eval()
        bank = AdapterBank(base, BankSpec(adapters={"attacker": LoraSpec(r=r), "defender": LoraSpec(r=r)}))
        params = {p.untyped_storage().data_ptr() for p in bank.parameters()}
        batch = build_scoring_batch([[5] * 11, [5] * 7, [6] * 9], [[7] * 6, [8] * 5, [9] * 6], 0)
        storages = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with bank.role("attacker") as model, bank.update_mode(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            completion_logprobs(model, batch)
        return sum(storages.values())

    return (saved(2) - saved(1)) / (3 * (11 + 6))


@pytest.mark.parametrize("dtype_name, bytes_", [("bfloat16", 2), ("float32", 4)])
def test_activation_bytes_equal_what_autograd_keeps(dtype_name, bytes_):
    """The planner's per-token, per-layer activations against a measurement of the real layer (bf16 base with
    float32 LoRA casts every LoRA input to float32; a float32 base shares them)."""
    import torch

    from abspo.training.planner import activation_bytes_per_token_layer

    arch = Architecture(layers=1, hidden=64, intermediate=176, heads=4, kv_heads=2, vocab=100, tied_embeddings=False)
    measured = saved_bytes_per_token_layer(getattr(torch, dtype_name), r=4)
    assert activation_bytes_per_token_layer(arch, bytes_, 4, lora_rank=4, sequence=17) == measured


@pytest.mark.parametrize("head", ["fused", "plain", "lora"])
def test_the_completion_logits_term_bounds_the_measured_peak_of_scoring(head):
    """The planner's "completion logits" against the peak tensor memory of one scoring forward and backward of a
    one-layer model whose vocabulary dwarfs the rest (bf16 base, autocast, as on a GPU): the head scored in
    place, the plain path from the logits, and a LoRA'd head (which takes the plain path; PEFT's float32 branch
    output is transient and raises nothing). Within 5% below and 10% above (the layer's own activations)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from abspo.rl.rollout import build_scoring_batch, completion_logprobs
    from abspo.core.timing import tensor_peak

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    targets = ["q_proj", "lm_head"] if head == "lora" else ["q_proj"]
    bank = AdapterBank(LlamaForCausalLM(cfg).to(torch.bfloat16).eval(), BankSpec(adapters={
        "attacker": LoraSpec(r=4, target_modules=targets), "defender": LoraSpec(r=4, target_modules=["q_proj"])}))
    rows, completion = 4, 64
    batch = build_scoring_batch([[5] * 8] * rows, [[6] * completion] * rows, 0)
    with bank.role("attacker") as model, bank.update_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        scored = lambda: completion_logprobs(model, batch, with_entropy=True, fused=head != "plain" and None)  # noqa: E731
        scored()[0].sum().backward()  # first-call allocations (caches) out of the way
        with tensor_peak() as peak:
            scored()[0].sum().backward()
    arch = Architecture.from_hf_config(cfg)
    inputs = PlanInputs(arch=arch, lora_ranks=[4, 4], games=rows, micro_batch_size=rows, prompt_tokens=8,
                        new_tokens_attacker=completion, new_tokens_defender=completion, runtime_gib=0.0,
                        head_adapters=[head == "lora", False])
    planned = plan_memory(inputs if head != "plain" else replace(inputs, arch=replace(arch, fused_head=False)))
    term = planned.phases["update"]["completion logits"] / 2**20
    assert 0.95 * term <= peak.peak_mib <= 1.1 * term, (term, peak.peak_mib)


@pytest.mark.parametrize("config", ["qwen2.5-3b", "qwen2.5-7b", "qwen2.5-7b-ddp", "qwen2.5-14b-fsdp"])
def test_every_paper_scale_config_fits_an_80_gib_device(config):
    """The configs are sized by the planner (bf16 base, float32 LoRA inputs counted): none asks for more than 90%
    of an H100 (7B with four 1,280-token turns per micro-batch would: 76 GiB)."""
    plan = plan_memory(inputs_from_config([f"configs/{config}.yaml"], device_memory_gib=80))
    assert plan.fits, plan.table()


def test_a_device_plays_whole_grpo_groups():
    p = PlanInputs(arch=TOY, games=12 * 8, group_size=8, devices=8)  # 12 seeds over 8 devices: 2 on the busiest
    assert p.games_per_device == 16
    assert plan_memory(p).phases["rollouts"]["KV cache"] == plan_memory(replace(p, games=16, devices=1)).phases[
        "rollouts"]["KV cache"]


def test_devices_as_a_list_count_and_auto_asks_for_a_number(tmp_path):
    from abspo.core.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  devices: [0, 1, 2]\n  num_nodes: 2\n")
    assert inputs_from_config(["configs/tiny.yaml", str(config)]).devices == 6
    config.write_text("trainer:\n  devices: -1\n")
    with pytest.raises(ConfigError, match=r"trainer.devices: .*Fix: pass --devices N"):
        inputs_from_config(["configs/tiny.yaml", str(config)])
    assert inputs_from_config(["configs/tiny.yaml", str(config)], devices=4).devices == 4


def test_shared_full_runs_on_its_float32_copy_and_fsdp2_keeps_the_root_gathered():
    p = PlanInputs(arch=TOY, base_dtype="bfloat16", games=4, prompt_tokens=10, new_tokens_attacker=5,
                   new_tokens_defender=7)
    lora, full = plan_memory(p), plan_memory(replace(p, mode="shared_full"))
    assert full.phases["rollouts"]["KV cache"] == 2 * lora.phases["rollouts"]["KV cache"], "float32 KV cache"
    sharded = plan_memory(replace(p, devices=4, sharded=True))
    assert sharded.phases["update"]["gathered root"] == (100 * 8 + 8) * 2 * 3 / 4  # tied embeddings + final norm
