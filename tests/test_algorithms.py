"""Golden-value tests of the pure RL math in abspo.rl.algorithms.

Every expected number below is worked out by hand in the comment next to it; none is produced by calling the
function under test a second time.
"""

from __future__ import annotations

import math

import pytest
import torch

from abspo.rl.algorithms import (
    advantages,
    objective,
    grpo_advantages,
    kl_k1,
    kl_k3,
    masked_mean,
    masked_whiten,
    normalize_rewards,
    policy_loss,
    reinforce_pp_advantages,
    reinforce_pp_returns,
    reward_std,
    rloo_advantages,
    truncated_is_weights,
)

SQRT2, SQRT3 = math.sqrt(2.0), math.sqrt(3.0)


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0.0)


# -- masked_mean ----------------------------------------------------------------------------------------------


def test_masked_mean_whole_tensor_ignores_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 600.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # real entries 1, 2, 4 -> 7 / 3
    close(masked_mean(x, mask), 7.0 / 3.0)


def test_masked_mean_per_row_and_empty_row_is_zero_not_nan():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    # row 0: (1 + 2) / 2 = 1.5; row 1 has no real token: 0 / clamp(0, 1) = 0
    close(masked_mean(x, mask, dim=-1), [1.5, 0.0])
    close(masked_mean(x, torch.zeros_like(mask)), 0.0)


# -- masked_whiten --------------------------------------------------------------------------------------------


def test_masked_whiten_hand_example_and_masked_entries_are_zero():
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # real values 1, 2, 3: mean 2, population var (1 + 0 + 1) / 3 = 2/3, std = sqrt(2/3)
    # (1 - 2) / sqrt(2/3) = -sqrt(1.5) = -1.2247449; 0; +1.2247449; the masked 100 becomes 0
    s = math.sqrt(1.5)
    close(masked_whiten(x, mask), [[-s, 0.0], [s, 0.0]])


def test_masked_whiten_constant_input_gives_zeros_not_nan():
    x = torch.full((3, 4), 0.7)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    out = masked_whiten(x, mask)
    assert not torch.isnan(out).any()
    close(out, torch.zeros(3, 4), atol=1e-3)


def test_masked_whiten_has_zero_mean_unit_variance_over_real_tokens():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g) * 3.0 + 5.0
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]])
    out = masked_whiten(x, mask)
    real = out[mask.bool()]
    close(real.mean(), 0.0)
    close((real ** 2).mean(), 1.0, atol=1e-4)
    assert (out[~mask.bool()] == 0).all()


# -- KL estimators --------------------------------------------------------------------------------------------


def test_kl_k1_hand_value():
    # log pi - log ref = -1 - (-2) = 1
    close(kl_k1(torch.tensor([-1.0]), torch.tensor([-2.0])), [1.0])


def test_kl_k3_hand_values():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    # r = ref - logp. token 0: r = -1 -> e^-1 - (-1) - 1 = e^-1 = 0.3678794
    # token 1: r = +1 -> e^1 - 1 - 1 = e - 2 = 0.7182818
    close(kl_k3(logp, ref), [math.exp(-1.0), math.e - 2.0])


def test_kl_k3_non_negative_and_zero_when_equal():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(200, generator=g) * 5
    ref = -torch.rand(200, generator=g) * 5
    assert (kl_k3(logp, ref) >= 0).all()
    close(kl_k3(logp, logp), torch.zeros(200), atol=0.0)


def test_k1_and_k3_are_unbiased_for_kl_pi_ref():
    # Exact expectation over a 3-way categorical pi = [.7, .2, .1], ref = [.2, .3, .5]:
    # KL(pi || ref) = .7 ln 3.5 + .2 ln(2/3) + .1 ln .2 = .8769341 - .0810930 - .1609438 = .6348973
    # (k3 with the arguments swapped would give sum p^2/q - KL - 1 = 2.6033 - .6349 - 1 = .968)
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    close((p * kl_k1(p.log(), q.log())).sum(), 0.6348973)
    close((p * kl_k3(p.log(), q.log())).sum(), 0.6348973)


# -- REINFORCE++ ----------------------------------------------------------------------------------------------


def test_reinforce_pp_returns_hand_2x3():
    rewards = torch.tensor([1.0, -2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # kl_coef = 0.1. Row 0 token rewards: -0.01, -0.02, -0.03 + 1 (last real) = 0.97
    #   reward-to-go: 0.94, 0.95, 0.97
    # Row 1 (last real token is index 1; the 9.0 sits on padding and must not count):
    #   token rewards -0.05, +0.04 - 2 = -1.96, pad 0 -> reward-to-go -0.05 - 1.96 = -2.01, -1.96, 0
    out = reinforce_pp_returns(rewards, kl, mask, kl_coef=0.1)
    close(out, [[0.94, 0.95, 0.97], [-2.01, -1.96, 0.0]])


def test_reinforce_pp_returns_reward_on_last_real_token_only():
    rewards = torch.tensor([3.0, 5.0, 7.0])
    kl = torch.zeros(3, 4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    # no KL: every real token's return is the sequence reward; padding is 0; an empty row gets nothing
    out = reinforce_pp_returns(rewards, kl, mask, kl_coef=0.5)
    close(out, [[3.0, 0, 0, 0], [5.0, 5.0, 5.0, 5.0], [0, 0, 0, 0]])


def test_reinforce_pp_returns_accepts_bool_mask():
    out = reinforce_pp_returns(torch.tensor([2.0]), torch.tensor([[1.0, 1.0, 1.0]]),
                               torch.tensor([[True, True, False]]), kl_coef=1.0)
    # token rewards -1, -1 + 2 = 1, pad -> returns 0, 1, 0
    close(out, [[0.0, 1.0, 0.0]])


def test_reinforce_pp_advantages_whitens_returns_over_real_tokens():
    rewards = torch.tensor([1.0, -1.0])
    kl = torch.zeros(2, 2)
    mask = torch.tensor([[1, 1], [1, 0]])
    # returns [[1, 1], [-1, pad]]; real values 1, 1, -1: mean 1/3,
    # var = ((2/3)^2 * 2 + (4/3)^2) / 3 = (8/9 + 16/9) / 3 = 8/9, std = 2*sqrt(2)/3
    # (2/3) / (2 sqrt2 / 3) = 1/sqrt2;  (-4/3) / (2 sqrt2 / 3) = -sqrt2
    out = reinforce_pp_advantages(rewards, kl, mask, kl_coef=0.3)
    close(out, [[1 / SQRT2, 1 / SQRT2], [-SQRT2, 0.0]])


def test_reinforce_pp_advantages_all_equal_rewards_no_kl_give_zero():
    out = reinforce_pp_advantages(torch.tensor([2.0, 2.0]), torch.zeros(2, 3),
                                  torch.tensor([[1, 1, 1], [1, 1, 0]]), kl_coef=0.01)
    assert not torch.isnan(out).any()
    close(out, torch.zeros(2, 3), atol=1e-3)


# -- reward normalisation and GRPO -----------------------------------------------------------------------------


def test_normalize_rewards_hand_values():
    # [1, 3]: mean 2, centred [-1, 1], population var 1 -> [-1, 1]
    close(normalize_rewards(torch.tensor([1.0, 3.0])), [-1.0, 1.0])
    # [0, 0, 3]: mean 1, centred [-1, -1, 2], var (1 + 1 + 4) / 3 = 2 -> [-1/sqrt2, -1/sqrt2, sqrt2]
    close(normalize_rewards(torch.tensor([0.0, 0.0, 3.0])), [-1 / SQRT2, -1 / SQRT2, SQRT2])


@pytest.mark.parametrize("values", [[2.0, 2.0, 2.0], [-0.5], [0.1] * 7])
def test_normalize_rewards_all_equal_gives_zeros(values):
    out = normalize_rewards(torch.tensor(values))
    assert not torch.isnan(out).any()
    close(out, torch.zeros(len(values)), atol=1e-3)


def test_grpo_advantages_unbiased_std_per_group_unsorted_ids():
    rewards = torch.tensor([1.0, 0.0, 3.0, 0.0, 3.0, 5.0])
    groups = torch.tensor([7, 3, 7, 3, 3, 9])
    # group 7 = [1, 3]: mean 2, unbiased std sqrt((1 + 1) / 1) = sqrt2 -> -1/sqrt2, +1/sqrt2
    # group 3 = [0, 0, 3]: mean 1, unbiased std sqrt((1 + 1 + 4) / 2) = sqrt3 -> -1/sqrt3, -1/sqrt3, 2/sqrt3
    # group 9 = [5]: a singleton has no spread -> 0
    expected = [-1 / SQRT2, -1 / SQRT3, 1 / SQRT2, -1 / SQRT3, 2 / SQRT3, 0.0]
    close(grpo_advantages(rewards, groups), expected)


def test_grpo_advantages_all_equal_group_is_zero_not_nan():
    rewards = torch.tensor([2.0, 2.0, 2.0, -1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    out = grpo_advantages(rewards, groups)
    assert not torch.isnan(out).any()
    # group 0 all equal -> 0; group 1 = [-1, 1]: mean 0, unbiased std sqrt(2) -> -1/sqrt2, 1/sqrt2
    close(out, [0.0, 0.0, 0.0, -1 / SQRT2, 1 / SQRT2])


# -- policy loss ----------------------------------------------------------------------------------------------


def test_policy_loss_without_clip_is_minus_mean_advantage_at_ratio_one_and_masks():
    logp = torch.tensor([[-0.3, -1.2, -2.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clip_frac = policy_loss(logp, logp.detach(), adv, mask, clip_eps=None)
    # ratio 1 everywhere: -(2 + (-1)) / 2 = -0.5; the masked 5.0 does not count
    close(loss, -0.5)
    close(clip_frac, 0.0)
    loss.backward()
    # d loss / d logp = -adv * ratio / n_real = [-2/2, 1/2, 0]
    close(logp.grad, [[-1.0, 0.5, 0.0]])


def test_policy_loss_clipped_ppo_hand_example():
    eps = 0.2
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 3.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    old = torch.zeros(1, 5)
    logp = ratio.log().clone().requires_grad_(True)
    loss, clip_frac = policy_loss(logp, old, adv, mask, clip_eps=eps)
    # per token, max(-A r, -A clip(r, .8, 1.2)):
    #   A=+1, r=1.5: max(-1.5, -1.2) = -1.2  (clipped)
    #   A=+1, r=0.5: max(-0.5, -0.8) = -0.5  (not clipped: the pessimistic term is the raw one)
    #   A=-1, r=1.5: max( 1.5,  1.2) =  1.5  (not clipped)
    #   A=-1, r=0.5: max( 0.5,  0.8) =  0.8  (clipped)
    #   token 4 is padding
    # mean = (-1.2 - 0.5 + 1.5 + 0.8) / 4 = 0.15; clip fraction = 2 / 4
    close(loss, 0.15)
    close(clip_frac, 0.5)
    loss.backward()
    # clipped tokens carry no gradient; the others d(-A r)/dlogp = -A r / 4: -0.5/4, +1.5/4
    close(logp.grad, [[0.0, -0.125, 0.375, 0.0, 0.0]])


def test_policy_loss_ratio_inside_clip_range_equals_unclipped():
    ratio = torch.tensor([1.1, 0.9])
    adv = torch.tensor([2.0, -3.0])
    mask = torch.tensor([1, 1])
    loss, clip_frac = policy_loss(ratio.log(), torch.zeros(2), adv, mask, clip_eps=0.2)
    # (-2 * 1.1 + 3 * 0.9) / 2 = (-2.2 + 2.7) / 2 = 0.25
    close(loss, 0.25)
    close(clip_frac, 0.0)


# -- advantages(): the estimator and the KL placement in one place ---------------------------------------------


def trl_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """TRL GRPOTrainer's formula (scale_rewards="group"), written out: consecutive groups of ``group_size``,
    (r - group mean) / (unbiased group std + 1e-4)."""
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(1).repeat_interleave(group_size)
    std = grouped.std(1).repeat_interleave(group_size)
    return (rewards - mean) / (std + 1e-4)


def test_grpo_advantages_match_trls_formula_on_identical_inputs():
    g = torch.Generator().manual_seed(3)
    rewards = torch.randint(-3, 4, (32,), generator=g).float()
    rewards[:4] = 2.0  # one group of equal rewards: TRL gives 0
    groups = torch.arange(32) // 4
    out = advantages("grpo", rewards, torch.zeros(32, 5), torch.ones(32, 5), kl_coef=0.01, groups=groups)
    torch.testing.assert_close(out[:, 0], trl_grpo_advantages(rewards, 4), atol=2e-3, rtol=1e-3)  # eps differs
    assert (out == out[:, :1]).all(), "no KL: the sequence advantage on every token"
    assert (out[:4] == 0).all()


@pytest.mark.parametrize("kl_coef", [0.01, 0.001, 0.0001])
def test_grpo_equal_rewards_advantage_is_only_the_small_kl_penalty(kl_coef):
    # The trap: KL folded into the reward before the group standardisation gives ±1 of standardised KL noise
    # whatever kl_coef is. Standardise the task reward (all equal -> 0), then add -kl_coef * reward-to-go(k1).
    kl = torch.tensor([[0.3, -0.1, 0.2], [0.05, 0.4, 0.0], [-0.2, 0.1, 0.1], [0.0, 0.0, 0.6]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
    out = advantages("grpo", torch.ones(4), kl, mask, kl_coef, groups=torch.zeros(4, dtype=torch.long))
    # row 0 reward-to-go of k1: [0.4, 0.1, 0.2]; row 1: [0.45, 0.4, pad]; row 3: [0.0, pad, pad]
    close(out[0], [-0.4 * kl_coef, -0.1 * kl_coef, -0.2 * kl_coef], atol=1e-7)
    close(out[1], [-0.45 * kl_coef, -0.4 * kl_coef, 0.0], atol=1e-7)
    close(out[3], [0.0, 0.0, 0.0], atol=0.0)


def test_grpo_kl_is_added_after_standardisation():
    rewards, groups = torch.tensor([0.0, 2.0]), torch.tensor([0, 0])
    kl = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # task: [0, 2], mean 1, unbiased std sqrt2 -> -1/sqrt2, +1/sqrt2; row 0 then minus 0.5 * reward-to-go [2, 1]
    out = advantages("grpo", rewards, kl, torch.ones(2, 2), kl_coef=0.5, groups=groups)
    close(out, [[-1 / SQRT2 - 1.0, -1 / SQRT2 - 0.5], [1 / SQRT2, 1 / SQRT2]])


def test_reinforce_pp_through_advantages_equals_the_direct_path():
    rewards = torch.tensor([1.0, 3.0, -1.0])
    kl = torch.tensor([[0.1, 0.2], [0.0, -0.3], [0.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    close(advantages("reinforce_pp", rewards, kl, mask, 0.1),
          reinforce_pp_advantages(normalize_rewards(rewards), kl, mask, 0.1))
    close(advantages("reinforce_pp", rewards, kl, mask, 0.1, normalize_rewards_first=False),
          reinforce_pp_advantages(rewards, kl, mask, 0.1))


def test_objective_adds_k3_only_when_the_kl_is_in_the_loss():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-2.0, -1.0]])
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    # ratio 1: policy term mean(-adv) = 0; k3 tokens e^-1 and e - 2 -> mean (e^-1 + e - 2) / 2 = 0.5430806
    loss, _ = objective(logp, logp, ref, adv, mask, None, kl_coef=0.5, kl_in_loss=True)
    close(loss, 0.5 * 0.5430806)
    loss, _ = objective(logp, logp, ref, adv, mask, None, kl_coef=0.5, kl_in_loss=False)
    close(loss, 0.0)


def test_the_k3_loss_term_is_a_mean_over_real_tokens_only():
    """Two completions of 2 and 1 real tokens, right-padded to 4 with values that would dominate any mean that
    counted them (the RL review's finding (c)). Hand values: k3 = e^(r) - r - 1 with r = ref - logp per token:
    r = -1, 1 and 0 -> e^-1, e - 2 and 0 -> mean over the 3 real tokens (e^-1 + e - 2) / 3 = 0.3620537."""
    pad = 9.0
    logp = torch.tensor([[-1.0, -2.0, pad, pad], [-3.0, pad, pad, pad]])
    ref = torch.tensor([[-2.0, -1.0, -pad, -pad], [-3.0, -pad, -pad, -pad]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    adv = torch.zeros(2, 4)
    loss, _ = objective(logp, logp, ref, adv, mask, None, kl_coef=1.0, kl_in_loss=True)
    close(loss, (math.exp(-1.0) + math.e - 2.0) / 3)
    wider, _ = objective(*(torch.nn.functional.pad(x, (0, 3), value=pad) for x in (logp, logp)),
                         torch.nn.functional.pad(ref, (0, 3), value=-pad), torch.zeros(2, 7),
                         torch.nn.functional.pad(mask, (0, 3)), None, kl_coef=1.0, kl_in_loss=True)
    close(wider, (math.exp(-1.0) + math.e - 2.0) / 3)  # more padding changes nothing


def test_grpo_advantages_stay_on_the_input_device():
    out = grpo_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
    assert out.device == torch.tensor([1.0]).device


# -- RLOO: leave-one-out baseline -----------------------------------------------------------------------------


def test_rloo_advantages_by_hand_any_order_and_uneven_groups():
    # group 7: [1, 0, 2, -1], sum 2: 1 - (2-1)/3 = 2/3; 0 - 2/3 = -2/3; 2 - 0/3 = 2; -1 - 3/3 = -2
    # group 3: [3, 1] (size 2): 3 - 1 = 2; 1 - 3 = -2. group 5: [4] alone: 0 (no other sample)
    rewards = torch.tensor([1.0, 3.0, 0.0, 4.0, 2.0, 1.0, -1.0])
    groups = torch.tensor([7, 3, 7, 5, 7, 3, 7])
    close(rloo_advantages(rewards, groups), [2 / 3, 2.0, -2 / 3, 0.0, 2.0, -2.0, -2.0])


def trl_rloo_advantages(rewards: torch.Tensor, k: int, layout: str) -> torch.Tensor:
    """TRL's RLOOTrainer, written out as math on a flat batch: v0.11-v0.21 lay sample j of prompt p at j*B + p
    ("strided": rewards.reshape(k, -1), groups are columns); v0.22+ at p*k + j ("contiguous": view(-1, k)).
    Baseline (group sum - r) / (k - 1); no whitening (normalize_advantage defaults to False)."""
    grouped = rewards.reshape(k, -1) if layout == "strided" else rewards.view(-1, k)
    dim = 0 if layout == "strided" else 1
    baseline = (grouped.sum(dim, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).flatten()


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
@pytest.mark.parametrize("k", [2, 4])
def test_rloo_matches_trls_rloo_on_identical_tensors(layout, k):
    g = torch.Generator().manual_seed(k)
    rewards = torch.randn(8 * k, generator=g)
    prompts = torch.arange(8).repeat(k) if layout == "strided" else torch.arange(8).repeat_interleave(k)
    # kl_coef = 0: TRL folds its KL into the reward before the baseline, abspo adds it per token after
    out = advantages("rloo", rewards, torch.zeros(8 * k, 3), torch.ones(8 * k, 3), kl_coef=0.0, groups=prompts)
    torch.testing.assert_close(out[:, 0], trl_rloo_advantages(rewards, k, layout), atol=1e-6, rtol=1e-6)
    assert (out == out[:, :1]).all()


def test_rloo_kl_is_added_after_the_baseline():
    rewards, groups = torch.tensor([0.0, 2.0]), torch.tensor([0, 0])
    kl = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # task: 0 - 2 = -2, 2 - 0 = 2; row 0 then minus 0.5 * reward-to-go [2, 1]
    out = advantages("rloo", rewards, kl, torch.ones(2, 2), kl_coef=0.5, groups=groups)
    close(out, [[-3.0, -2.5], [2.0, 2.0]])


def test_rloo_needs_groups():
    with pytest.raises(ValueError, match="rloo needs the group"):
        advantages("rloo", torch.ones(2), torch.zeros(2, 2), torch.ones(2, 2), 0.1)


# -- REINFORCE++ on a batch without task signal (RL review (a)) -------------------------------------------------


@pytest.mark.parametrize("kl_coef", [0.1, 0.01])
@pytest.mark.parametrize("normalize", [True, False])
def test_reinforce_pp_equal_rewards_leave_only_the_anchor_pull_at_kl_coef(kl_coef, normalize):
    # All rewards equal: normalised they are 0, and whitening would scale the pure KL returns to unit variance
    # whatever kl_coef is. The advantage is the penalty's reward-to-go as it is: -kl_coef * [0.3, 0.1] etc.
    kl = torch.tensor([[0.2, 0.1, 0.0], [0.4, -0.1, 0.3]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = advantages("reinforce_pp", torch.full((2,), 0.7), kl, mask, kl_coef, normalize_rewards_first=normalize)
    # row 0: to-go of [0.2, 0.1] = [0.3, 0.1]; row 1: to-go of [0.4, -0.1, 0.3] = [0.6, 0.2, 0.3]
    close(out, [[-0.3 * kl_coef, -0.1 * kl_coef, 0.0], [-0.6 * kl_coef, -0.2 * kl_coef, -0.3 * kl_coef]], atol=1e-7)


def test_reinforce_pp_any_spread_in_the_rewards_is_still_whitened():
    kl = torch.tensor([[0.2, 0.1], [0.4, -0.1]])
    mask = torch.ones(2, 2)
    out = advantages("reinforce_pp", torch.tensor([0.7, 0.8]), kl, mask, 0.1)
    close(out, reinforce_pp_advantages(normalize_rewards(torch.tensor([0.7, 0.8])), kl, mask, 0.1))
    close(masked_mean(out.pow(2), mask), 1.0, atol=1e-4)  # whitened: unit variance, zero mean


def test_reward_std_is_the_population_std():
    close(reward_std(torch.tensor([1.0, 3.0])), 1.0)  # mean 2, deviations +-1
    close(reward_std(torch.tensor([2.0, 2.0, 2.0])), 0.0)


def test_truncated_is_weights_cap_the_top_only_and_zero_padding():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, 0.0]])
    sampler = torch.tensor([[-1.0, -1.0, -2.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # exp(old - sampler): [1, e^-1 = 0.3679, e^1.5 = 4.48 -> cap 2]; [e^-2 = 0.1353, 1, padding -> 0]
    close(truncated_is_weights(old, sampler, mask, cap=2.0), [[1.0, math.exp(-1.0), 2.0], [math.exp(-2.0), 1.0, 0.0]])


def test_token_weights_scale_each_tokens_policy_term_and_not_the_kl():
    logp = torch.zeros(1, 2, requires_grad=True)
    adv, mask, w = torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), torch.tensor([[2.0, 0.5]])
    loss, _ = objective(logp, logp.detach(), torch.zeros(1, 2), adv, mask, None, kl_coef=0.0, kl_in_loss=True,
                        token_weights=w)
    (grad,) = torch.autograd.grad(loss, logp)
    close(grad, [[-1.0, -0.25]])  # d/dlogp of -(A * ratio * w) / 2 tokens = -w / 2
