"""Generation and scoring: the layout of a scoring batch, padding-independent log-probs, and one distribution for
sampling and scoring whatever the model's own generation config says."""

from __future__ import annotations

import pytest
import torch

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.rl.rollout import KeyedGumbelSampler, build_scoring_batch, completion_logprobs, generate, hash32, keyed_uniform
from tests.conftest import perturb

PROMPTS = ["Hello there, how", "A much longer prompt about the weather today and tomorrow", "Hi"]


def test_scoring_batch_layout_left_pads_prompts_and_right_pads_completions():
    batch = build_scoring_batch([[5, 6, 7], [8]], [[1, 2], [3, 4, 9, 9]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 1, 2, 0, 0], [0, 0, 8, 3, 4, 9, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]]
    assert batch.position_ids.tolist()[1][2:] == [0, 1, 2, 3, 4], "positions count real tokens only"
    assert batch.completion_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_logprobs_do_not_depend_on_the_batch_they_are_padded_into(tiny_base):
    model, _ = tiny_base
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (3, 9, 1, 6)]
    completions = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (4, 1, 7, 2)]
    together, _ = completion_logprobs(model, build_scoring_batch(prompts, completions, 0))
    for i, (p, c) in enumerate(zip(prompts, completions)):
        alone, _ = completion_logprobs(model, build_scoring_batch([p], [c], 0))
        torch.testing.assert_close(together[i, :len(c)], alone[0], atol=1e-5, rtol=0)
        assert (together[i, len(c):] == 0).all()
    # by hand for one row: log softmax of the full-sequence logits at the position before each completion token
    ids = torch.tensor([prompts[1] + completions[1]])
    logits = model(input_ids=ids).logits[0, len(prompts[1]) - 1]
    torch.testing.assert_close(together[1, 0], logits.log_softmax(-1)[completions[1][0]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("keyed", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_and_scoring_use_one_distribution_whatever_the_models_generation_config(tiny_base, temperature, keyed):
    model, tok = tiny_base
    # What Qwen2.5-Instruct ships, exaggerated: none of it may leak into training rollouts.
    model.generation_config.repetition_penalty = 1.5
    model.generation_config.top_k = 5
    model.generation_config.top_p = 0.5
    model.generation_config.temperature = 0.3
    torch.manual_seed(0)
    gen = generate(model, tok, PROMPTS, 12, temperature=temperature, return_logprobs=True,
                   keys=[11, 22, 33] if keyed else None)
    scored, _ = completion_logprobs(model, build_scoring_batch(gen.prompt_ids, gen.completion_ids, tok.pad_token_id),
                                    temperature=temperature)
    for i, completion in enumerate(gen.completion_ids):
        assert completion
        torch.testing.assert_close(torch.tensor(gen.sampled_logprobs[i]), scored[i, :len(completion)],
                                   atol=1e-4, rtol=0)
    assert model.generation_config.repetition_penalty == 1.5, "the model's own config is restored"


def test_completions_stop_after_the_first_end_of_sequence_token(tiny_base):
    model, tok = tiny_base
    torch.manual_seed(0)
    gen = generate(model, tok, PROMPTS, 6, temperature=1.0)
    eos = tok.eos_token_id
    for completion in gen.completion_ids:
        assert eos not in completion[:-1]
        assert len(completion) <= 6


def test_scoring_refuses_greedy_temperature(tiny_base):
    model, _ = tiny_base
    with pytest.raises(ValueError, match="positive temperature"):
        completion_logprobs(model, build_scoring_batch([[5]], [[6]], 0), temperature=0.0)


def _lowbias32(x: int) -> int:
    """The reference hash in plain Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash32_equals_the_reference_hash_without_int64_overflow():
    xs = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
    assert hash32(torch.tensor(xs)).tolist() == [_lowbias32(x) for x in xs]
    assert len(set(hash32(torch.arange(100_000)).tolist())) == 100_000, "a bijection has no collisions"


def test_keyed_uniforms_are_uniform_and_a_function_of_key_step_and_index():
    u = keyed_uniform(torch.arange(64), step=3, vocab=1000)
    assert u.shape == (64, 1000) and (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    torch.testing.assert_close(keyed_uniform(torch.tensor([7, 5]), 3, 1000), u[[7, 5]], rtol=0, atol=0)
    assert not torch.equal(keyed_uniform(torch.tensor([5]), 4, 1000), u[[5]]), "another step, other noise"


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_keyed_gumbel_max_draws_from_the_tempered_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 40_000
    sampler = KeyedGumbelSampler(list(range(n)), temperature)
    picked = sampler(torch.zeros((n, 3), dtype=torch.long), logits.expand(n, -1).clone()).argmax(-1)
    freq = torch.bincount(picked, minlength=5).double() / n
    expected = torch.softmax(logits.double() / temperature, -1)
    assert (freq - expected).abs().max() < 0.01, (freq, expected)


def test_keyed_samples_do_not_depend_on_the_batch_they_are_drawn_in(tiny_base):
    model, tok = tiny_base
    alone = [generate(model, tok, [p], 10, temperature=1.0, keys=[k]).completion_ids[0]
             for p, k in zip(PROMPTS, [101, 202, 303])]
    torch.manual_seed(123)  # the torch RNG plays no part
    together = generate(model, tok, PROMPTS[::-1] + ["An extra, much longer prompt that widens the padding"],
                        10, temperature=1.0, keys=[303, 202, 101, 404]).completion_ids
    assert together[:3][::-1] == alone
    other = generate(model, tok, PROMPTS, 10, temperature=1.0, keys=[1, 2, 3]).completion_ids
    assert other != alone, "other keys, other samples"


# -- decoding speed-ups: a static KV cache and compiled decoding change no token ----------------------------------


def _role_generations(bank, tok, decoding, roles, new_tokens=7):
    out = []
    for role in roles:
        with bank.role(role) as model:
            out.append(generate(model, tok, PROMPTS, new_tokens, 1.0, keys=[11, 12, 13], decoding=decoding).completion_ids)
    return out


@pytest.mark.parametrize("new_tokens", [3, 9])
def test_static_cache_samples_the_tokens_of_the_dynamic_cache_for_every_role(new_tokens):
    from abspo.rl.rollout import DecodingConfig, sampling_config
    from tests.conftest import perturb, tiny_bank

    bank, tok = tiny_bank()
    perturb(bank.role_parameters("attacker"), 1, scale=3.0)  # large enough to change the roles' samples
    perturb(bank.role_parameters("defender"), 2, scale=3.0)
    static = DecodingConfig(cache="static")
    roles = ["attacker", "defender", "attacker"]
    dynamic_out = _role_generations(bank, tok, None, roles, new_tokens)
    assert dynamic_out[0] != dynamic_out[1], "the roles sample differently (else the check below proves nothing)"
    assert _role_generations(bank, tok, static, roles, new_tokens) == dynamic_out
    # and the cache generate built was the static one
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    config = sampling_config(bank.model, tok, 3, 1.0, decoding=static)
    config.return_dict_in_generate = True
    assert type(bank.model.generate(**enc, generation_config=config).past_key_values).__name__ == "StaticCache"


@pytest.mark.slow
def test_compiled_decoding_keeps_role_switches_and_in_place_updates_exact():
    """torch.compile guards on the bank's routing attributes (a new role recompiles, never reuses another role's
    graph) and reads adapter weights as inputs (a step in place is seen). aot_eager: dynamo's capture and guards
    without code generation, which is what decides the routing (inductor's numerics: benchmarks/bench_rollouts.py)."""
    from torch._dynamo.utils import counters

    from abspo.rl.rollout import DecodingConfig
    from tests.conftest import perturb, tiny_bank

    torch._dynamo.reset()
    bank, tok = tiny_bank()
    perturb(bank.role_parameters("attacker"), 1, scale=3.0)
    perturb(bank.role_parameters("defender"), 2, scale=3.0)
    compiled = DecodingConfig(cache="static", compile=True, compile_backend="aot_eager")
    roles = ["attacker", "defender", "attacker", "defender"]
    before = counters["stats"]["unique_graphs"]
    eager = _role_generations(bank, tok, None, roles)
    assert eager[0] != eager[1], "the roles sample differently (else the check proves nothing)"
    assert _role_generations(bank, tok, compiled, roles) == eager
    assert counters["stats"]["unique_graphs"] > before, "the decoding forward was compiled"
    perturb(bank.role_parameters("attacker"), 5, scale=3.0)  # an optimizer step, in place
    stepped = _role_generations(bank, tok, None, ["attacker"])
    assert stepped[0] != eager[0], "the step changed the attacker's samples (else the check proves nothing)"
    assert _role_generations(bank, tok, compiled, ["attacker"]) == stepped
    torch._dynamo.reset()


def test_compiled_decoding_needs_a_static_cache_and_a_known_backend():
    from abspo.core.errors import ConfigError
    from abspo.rl.rollout import DecodingConfig

    with pytest.raises(ConfigError, match=r"model\.rollout\.hf\.compile: .*Fix: set model\.rollout\.hf\.cache: static"):
        DecodingConfig(compile=True).validate()
    with pytest.raises(ConfigError, match=r"model\.rollout\.hf\.compile_backend: .*'inductr'.*Fix: use one of .*inductor"):
        DecodingConfig(cache="static", compile=True, compile_backend="inductr").validate()
    DecodingConfig(cache="static", compile=True, compile_backend="aot_eager").validate()


# -- scoring inside the LM head: the same log-probs and gradients as from the model's logits ----------------------

TINY_SHAPES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)


def _tiny_causal_lm(model_type: str, tied: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    extra = {"head_dim": 8} if model_type == "qwen3" else {}
    config = AutoConfig.for_model(model_type, tie_word_embeddings=tied, **TINY_SHAPES, **extra)
    return AutoModelForCausalLM.from_config(config).eval()


def _ragged_batch(seed: int):
    """Prompts and completions of uneven lengths (one completion a single token), so rows pad differently."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 2, 9)]
    completions = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (3, 7, 1)]
    return build_scoring_batch(prompts, completions, pad_id=0)


def _assert_grads_close(got: list, want: list, rel: float) -> None:
    """Each gradient within ``rel`` of the other's norm (element tolerances fail on entries near zero)."""
    for g, w in zip(got, want, strict=True):
        diff, norm = (g.float() - w.float()).norm().item(), w.float().norm().item()
        assert diff <= rel * norm, f"gradient off by {diff:.2e} (norm {norm:.2e})"


def _scored(model, params, batch, fused: bool, temperature: float):
    for p in params:
        p.grad = None
    logp, entropy = completion_logprobs(model, batch, with_entropy=True, temperature=temperature, fused=fused)
    weights = torch.linspace(-1.0, 2.0, logp.numel()).view_as(logp)  # positions weighted unevenly
    (logp * weights).sum().backward()
    return logp.detach(), entropy, [p.grad.clone() for p in params]


@pytest.mark.parametrize("model_type, tied", [("llama", True), ("mistral", False), ("qwen2", False), ("qwen3", True)])
@pytest.mark.parametrize("autocast", [False, True])
def test_log_probs_computed_in_the_head_equal_those_from_the_logits(model_type, tied, autocast):
    """For every architecture on the fused list, through a LoRA bank (a role's adapters get the gradient) and as a
    fully trained model (the head, tied to the embeddings or not, gets it too): the same log-probs, entropies and
    gradients as the plain path. In float64 (both paths take the log-softmax in float32, so they agree to its
    rounding; in float32 the smallest gradients differ by 1e-3 of their norm through cancellation) and with a bf16
    base under autocast."""
    from abspo.rl.rollout import fused_head

    base = _tiny_causal_lm(model_type, tied).to(torch.bfloat16 if autocast else torch.float64)
    assert fused_head(base) is base.get_output_embeddings()
    batch = _ragged_batch(1)
    temperature = 0.7
    tol = dict(atol=2e-2, rtol=2e-2) if autocast else dict(atol=1e-6, rtol=1e-6)
    rel = 2e-2 if autocast else 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plain = _scored(base, list(base.parameters()), batch, False, temperature)
        fused = _scored(base, list(base.parameters()), batch, True, temperature)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(fused[0], plain[0], **tol)
    torch.testing.assert_close(fused[1][mask], plain[1][mask], **tol)
    assert (fused[0][~mask] == 0).all() and (fused[1][~mask] == 0).all()
    head_grad = base.get_output_embeddings().weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0, "the trained head gets its gradient"
    _assert_grads_close(fused[2], plain[2], rel)

    bank = AdapterBank(base, BankSpec(adapters={"attacker": LoraSpec(r=4), "defender": LoraSpec(r=4)}))
    adapter = bank.adapter_parameters("attacker")
    perturb(adapter, seed=3)
    if not autocast:
        for p in adapter:
            p.data = p.data.double()
    with bank.role("attacker") as model, bank.update_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                             enabled=autocast):
        plain = _scored(model, adapter, batch, False, temperature)
        fused = _scored(model, adapter, batch, True, temperature)
    assert fused_head(bank.model) is not None
    torch.testing.assert_close(fused[0], plain[0], **tol)
    _assert_grads_close(fused[2], plain[2], rel)


def test_a_listed_architecture_with_its_own_forward_scores_from_its_logits():
    """Remote code can declare ``model_type: llama`` and still change the logits after the head: only transformers'
    own forward is trusted to end at the head."""
    from transformers import LlamaForCausalLM

    from abspo.rl.rollout import fused_head

    class Halved(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits / 2
            return out

    model = Halved(_tiny_causal_lm("llama", tied=True).config).eval()
    assert fused_head(model) is None
    batch = _ragged_batch(3)
    logp, _ = completion_logprobs(model, batch)
    plain, _ = completion_logprobs(model, batch, fused=False)
    torch.testing.assert_close(logp, plain, atol=0, rtol=0)


def test_an_architecture_off_the_fused_list_scores_from_its_own_logits():
    """Gemma 2 soft-caps its logits after the head: scoring must see the capped logits, so it takes the plain path,
    and its log-probs are those of the capped distribution."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from abspo.rl.rollout import fused_head

    torch.manual_seed(0)
    config = AutoConfig.for_model("gemma2", final_logit_softcapping=0.5, head_dim=8, **TINY_SHAPES)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert fused_head(model) is None
    batch = _ragged_batch(2)
    logp, _ = completion_logprobs(model, batch)
    row = batch.input_ids[0][batch.attention_mask[0].bool()]  # row 0 unpadded: a prompt of 5, a completion of 3
    capped = model(input_ids=row[None]).logits[0, 4].log_softmax(-1)  # the position before the completion
    torch.testing.assert_close(logp[0, 0], capped[batch.completion_ids[0, 0]], atol=1e-5, rtol=0)
    assert logp[0, 0].exp() > 1 / 300 * 0.5 and capped.exp().max() < 0.01, "a softcap of 0.5 flattens everything"


def test_an_adapter_on_the_lm_head_scores_from_the_adapted_logits():
    """A LoRA'd head is no plain linear layer: scoring takes the model's logits, which include the head's adapter
    (a fused head would drop it). Every role then takes that path (the head is wrapped for all), as the planner
    counts it (``tests/test_planner.py``)."""
    from abspo.rl.rollout import fused_head

    base = _tiny_causal_lm("llama", tied=False).eval()
    bank = AdapterBank(base, BankSpec(adapters={"attacker": LoraSpec(r=4, target_modules=["q_proj", "lm_head"]),
                                                "defender": LoraSpec(r=4)}))
    perturb(bank.adapter_parameters("attacker"), seed=5)
    batch = _ragged_batch(3)
    with torch.no_grad():
        with bank.role("defender") as model:
            assert fused_head(model) is None
        with bank.role("attacker") as model:
            assert fused_head(model) is None
            adapted, _ = completion_logprobs(model, batch)
            head_b = model.get_output_embeddings().lora_B["attacker"].weight
            head_b.zero_()
            without, _ = completion_logprobs(model, batch)
    assert (adapted - without).abs().max() > 1e-4, "the head's adapter changes the scores"
