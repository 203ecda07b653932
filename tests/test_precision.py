"""Float32 arithmetic on a 16-bit model (abspo.rl.precision): it scores exactly as the float32 model with the same
weight values, it takes the rounding floor out of the KL between a role and the anchor, and the update's KL passes
use it when ``kl_precision: float32`` asks."""

from __future__ import annotations

import copy

import pytest
import torch

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.core.config import AlgorithmConfig
from abspo.core.errors import ConfigError
from abspo.rl.precision import Float32Compute, float32_compute
from abspo.rl.rollout import build_scoring_batch, completion_logprobs
from tests.conftest import perturb


def tiny(model_type: str = "qwen2"):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=320, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config).eval()


def ragged_batch():
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (9, 2, 14, 5)]
    completions = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (6, 11, 1, 8)]
    return build_scoring_batch(prompts, completions, pad_id=0)


def banked(model, scale: float) -> AdapterBank:
    bank = AdapterBank(copy.deepcopy(model), BankSpec(adapters={"attacker": LoraSpec(r=4), "defender": LoraSpec(r=4)}))
    perturb([p for n, p in bank.model.named_parameters() if "lora_B.attacker" in n], seed=1, scale=scale)
    return bank


def role_and_anchor(bank: AdapterBank, batch, precise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        with bank.role("attacker") as model, (Float32Compute() if precise else torch.autocast("cpu", enabled=False)):
            old, _ = completion_logprobs(model, batch)
        with bank.anchor() as model, (Float32Compute() if precise else torch.autocast("cpu", enabled=False)):
            ref, _ = completion_logprobs(model, batch)
    return old, ref


def mean_log_ratio(old, ref, mask) -> float:
    """The mean |log pi - log pi_ref| per token: the size of the k1 terms the KL reward sums (k3, about half its
    square, underflows in float32 at these sizes)."""
    return float(((old - ref).abs() * mask).sum() / mask.sum())


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
@pytest.mark.parametrize("fused", [None, False])
def test_a_16_bit_model_scores_as_the_float32_model_with_its_weight_values(model_type, fused):
    model16 = tiny(model_type).to(torch.bfloat16)
    model32 = copy.deepcopy(model16).float()  # the very bfloat16 values, held in float32
    batch = ragged_batch()
    with torch.inference_mode():
        with Float32Compute():
            got, _ = completion_logprobs(model16, batch, fused=fused)
        want, _ = completion_logprobs(model32, batch, fused=fused)
        plain16, _ = completion_logprobs(model16, batch, fused=fused)
    mask = batch.completion_mask
    torch.testing.assert_close(got[mask], want[mask], atol=1e-6, rtol=0)
    assert (plain16 - want)[mask].abs().max() > 1e-3, "bfloat16 arithmetic does round (else this test tests nothing)"
    assert all(p.dtype == torch.bfloat16 for p in model16.parameters()), "the weights stay 16-bit"


def test_float32_arithmetic_takes_the_rounding_floor_out_of_the_kl():
    """A near-zero adapter: in bfloat16 the role and the anchor round apart and the KL reads mostly rounding; in
    float32 arithmetic it reads what the float32 model with the same weights reads."""
    model16 = tiny().to(torch.bfloat16)
    batch, mask = ragged_batch(), ragged_batch().completion_mask
    bf16 = mean_log_ratio(*role_and_anchor(banked(model16, 1e-5), batch, precise=False), mask)
    precise = mean_log_ratio(*role_and_anchor(banked(model16, 1e-5), batch, precise=True), mask)
    exact = mean_log_ratio(*role_and_anchor(banked(copy.deepcopy(model16).float(), 1e-5), batch, precise=False), mask)
    assert precise == pytest.approx(exact, rel=1e-4)
    assert 0 < 10 * precise < bf16, (bf16, precise)


def test_float32_compute_also_turns_autocast_off():
    """Under ``bf16-mixed`` autocast even a float32 model computes its matmuls in bfloat16."""
    model = tiny()
    batch = ragged_batch()
    with torch.inference_mode():
        want, _ = completion_logprobs(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded, _ = completion_logprobs(model, batch)
            with float32_compute("cpu"):
                got, _ = completion_logprobs(model, batch)
    mask = batch.completion_mask
    assert (rounded - want)[mask].abs().max() > 1e-3
    torch.testing.assert_close(got[mask], want[mask], atol=1e-6, rtol=0)


@pytest.mark.parametrize("change", [{"kl_mode": "loss_k3"}, {"update_epochs": 2}, {"old_logprobs": "sampler"}])
def test_float32_kl_passes_refuse_what_they_would_not_cover(change):
    with pytest.raises(ConfigError) as err:
        AlgorithmConfig(kl_precision="float32", **change).validate()
    assert err.value.key == "model.algorithm.kl_precision"
    AlgorithmConfig(kl_precision="float32").validate()


def test_the_updates_kl_passes_compute_in_float32_when_asked(judge):
    """``kl_precision: float32`` on a bfloat16 base: both no-gradient passes (the role's and the anchor's) read what a
    float32 base with the same weight values reads, and GRPO then recomputes the role's pass (its gradient pass, in
    bfloat16, would otherwise stand in for it)."""
    from abspo.weights.models import BaseModel
    from abspo.training.module import SelfPlayModule

    def module(dtype: str, precision: str) -> SelfPlayModule:
        torch.manual_seed(0)
        return SelfPlayModule(base=BaseModel(name_or_path="tiny-qwen2", dtype=dtype), judge=judge,
                              algorithm=AlgorithmConfig(estimator="grpo", group_size=2, kl_precision=precision))

    precise, rounded, exact = module("bfloat16", "float32"), module("bfloat16", "model"), module("float32", "model")
    perturb([p for n, p in precise.bank.model.named_parameters() if "lora_B.attacker" in n], seed=1, scale=1e-3)
    for other in (rounded, exact):
        for mine, theirs in zip(other.bank.model.parameters(), precise.bank.model.parameters(), strict=True):
            mine.data.copy_(theirs.data)  # the same values (the float32 base: the bfloat16 ones, widened)
    g = torch.Generator().manual_seed(0)
    samples = [(torch.randint(5, 200, (p,), generator=g).tolist(), torch.randint(5, 200, (c,), generator=g).tolist(),
                1.0, 0, None) for p, c in ((7, 5), (12, 9), (3, 1))]
    (old, ref, mask), (old32, ref32, _), (old16, ref16, _) = (
        m.updater.reference_logprobs("attacker", samples) for m in (precise, exact, rounded))
    on = mask.bool()
    torch.testing.assert_close(old[on], old32[on], atol=1e-6, rtol=0)
    torch.testing.assert_close(ref[on], ref32[on], atol=1e-6, rtol=0)
    assert (old16 - old32)[on].abs().max() > 1e-3, "the bfloat16 passes round (else this tests nothing)"
    assert (precise.old_logprobs_source, rounded.old_logprobs_source) == ("recompute", "gradient_pass")
    precise.algorithm.kl_coef = 0.0  # the logged KL then compares two float32 passes too
    assert precise.old_logprobs_source == "recompute"


def test_writes_into_16_bit_tensors_are_refused_and_lookups_stay_exact():
    """Inside the block a 16-bit tensor from outside is read through a float32 copy: a write into it would land in
    the copy, so it is an error rather than a lost write. Casts to 16 bits stay float32, bit views stay views, and
    an embedding lookup gathers before it widens (no float32 copy of the table)."""
    table = torch.randn(50, 8).to(torch.bfloat16)
    ids = torch.tensor([3, 7, 7, 49])
    outside = torch.zeros(4, dtype=torch.bfloat16)
    with Float32Compute():
        for write in (lambda: outside.add_(1), lambda: outside.__setitem__(0, 2.0),
                      lambda: torch.add(outside, 1, out=outside)):
            with pytest.raises(RuntimeError, match="writes into a torch.bfloat16 tensor"):
                write()
        looked_up = torch.nn.functional.embedding(ids, table)
        assert looked_up.dtype == torch.float32 and torch.equal(looked_up, table.float()[ids])
        assert (outside + 1).bfloat16().dtype == torch.float32
        assert outside.view(torch.int16).dtype == torch.int16
        inside = torch.zeros(4, dtype=torch.bfloat16)  # made inside: float32, free to write
        inside.add_(1)
        assert inside.dtype == torch.float32 and list(iter(outside.float())) is not None
    assert torch.equal(outside, torch.zeros(4, dtype=torch.bfloat16)), "nothing was written"
