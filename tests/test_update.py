"""abspo.training.update: the passes of one adapter's update score at the temperature the turns were sampled at.

Sampling draws from softmax(logits / T) and the update's ratio, KL and entropy must use that distribution. A pass
that scored at T = 1 instead would give every figure of the update a wrong value, yet every other test would still
pass where it samples at T = 1 (the RL review's finding (b)). Here T = 0.5, and each pass is held against a value
computed independently: the sampler's own log-probs (recorded while it drew each token), and a direct scoring at T.
"""

from __future__ import annotations

import pytest
import torch

from abspo.rl import algorithms as alg
from abspo.core.config import AlgorithmConfig, OptimizerConfig
from abspo.game.rules import GameConfig
from abspo.training.module import SelfPlayModule
from abspo.rl.rollout import build_scoring_batch, completion_logprobs
from abspo.training.update import pad_to, role_samples
from tests.conftest import TINY, perturb

T = 0.5


def sampled(judge, temperature: float, seeds, old_logprobs: str = "sampler", **algorithm):
    module = SelfPlayModule(base=TINY, judge=judge, game=GameConfig(max_new_tokens_attacker=6, max_new_tokens_defender=9,
                                                                  temperature=temperature),
                            optimizers={"attacker": OptimizerConfig(lr=1e-2), "defender": OptimizerConfig(lr=1e-2)},
                            algorithm=AlgorithmConfig(old_logprobs=old_logprobs, kl_coef=0.1, **algorithm))
    perturb(module.bank.adapter_parameters("defender"), seed=4, scale=0.05)  # the role differs from its anchor
    return module, module.play(seeds.batch(0).seeds)


def sampler_logprobs(samples, width: int) -> torch.Tensor:
    return torch.stack([pad_to(torch.tensor([s[4]], dtype=torch.float32), width)[0] for s in samples])


def test_the_role_and_anchor_passes_score_at_the_sampling_temperature(judge, seeds):
    module, exchanges = sampled(judge, T, seeds)
    defender = role_samples("defender", exchanges)
    old, _, mask = module.updater.reference_logprobs("defender", defender)
    on = mask.bool()
    torch.testing.assert_close(old[on], sampler_logprobs(defender, old.shape[1])[on], atol=1e-4, rtol=0)
    # The attacker's adapter is still zero, so what it sampled with is its anchor's distribution.
    attacker = role_samples("attacker", exchanges)
    _, ref, mask = module.updater.reference_logprobs("attacker", attacker, with_role=False)
    on = mask.bool()
    torch.testing.assert_close(ref[on], sampler_logprobs(attacker, ref.shape[1])[on], atol=1e-4, rtol=0)


def test_the_gradient_pass_scores_at_the_sampling_temperature(judge, seeds):
    """With the KL in the loss, the old log-probs are the gradient pass's own: the entropy and the KL it reports
    are those of the distribution at T."""
    module, exchanges = sampled(judge, T, seeds, old_logprobs="recompute", kl_mode="loss_k3")
    assert module.old_logprobs_source == "gradient_pass"
    rollout = module.updater.rollout_batch(["defender"], exchanges)
    stats = module.updater.gradient_pass(["defender"], rollout)
    batch = build_scoring_batch(rollout.prompts, rollout.completions, module.pad_id)
    expected = {}
    for temperature in (T, 1.0):
        with torch.no_grad(), module.bank.role("defender") as model:
            logp, entropy = completion_logprobs(model, batch, with_entropy=True, temperature=temperature)
        with torch.no_grad(), module.bank.anchor("defender") as model:
            ref, _ = completion_logprobs(model, batch, temperature=temperature)
        mask = batch.completion_mask
        expected[temperature] = (float(alg.masked_mean(entropy, mask)), float(alg.masked_mean(alg.kl_k3(logp, ref), mask)))
    assert stats["entropy"] == pytest.approx(expected[T][0], rel=1e-4)
    assert stats["defender/kl"] == pytest.approx(expected[T][1], rel=1e-3)
    # At T = 1 both differ by far more than the tolerances above (else this would test nothing).
    assert abs(expected[1.0][0] - expected[T][0]) > 10 * 1e-4 * expected[T][0]
    assert abs(expected[1.0][1] - expected[T][1]) > 10 * 1e-3 * expected[T][1]
