"""The RL math, as pure tensor functions (no models, no state): advantages, KL estimators, policy loss.

Shapes: ``B`` sequences, ``T`` completion tokens (right-padded); ``mask`` is 1 on real completion tokens.

REINFORCE++ (the default, as in Self-RedTeam): every token gets the per-token KL penalty
``-kl_coef * (log pi - log pi_anchor)`` (the k1 estimator) and the last real token also gets the
sequence reward; the advantage of a token is the sum of rewards from it to the end (no discount, no
critic), then whitened over all tokens of the role's batch. No value network: the batch statistics are
the baseline. A batch whose task rewards are all equal has no task signal: whitening would scale its pure KL
returns to unit variance, so that the anchor's pull would no longer be set by ``kl_coef`` but be of the size of a
whole reward. Such a batch gets the KL penalty's reward-to-go as it is (the anchor alone acts, at ``kl_coef``).

GRPO: k samples per prompt; the advantage of a sample is its *task* reward standardised within its group,
broadcast to all its tokens. A group whose rewards are all equal gives zero advantage (no NaN: the
standard deviation is guarded). The k1 KL penalty, when it is in the reward, is added *after* the
standardisation, per token as reward-to-go (as REINFORCE++ adds it): folded into the sequence reward before
the standardisation, a group of equal task rewards would get advantages of about +-1 made of KL noise,
whatever ``kl_coef`` is.

RLOO: k samples per prompt; the baseline of a sample is the mean task reward of the *other* samples of its group
(leave-one-out), so ``A_i = R_i - (S - R_i) / (k - 1) = k / (k - 1) * (R_i - mean)``, unscaled by the group's
spread. The KL penalty is added after the baseline, per token, as in GRPO (TRL folds it into the sequence
reward before the baseline; with ``kl_coef = 0`` the two are the same numbers, tests/test_algorithms.py).

Data parallel: the batch statistics (whitening, reward normalisation) are sums over every process's share of
the batch. The functions that take them accept ``reduce``, a function that sums a tensor over processes (the
identity on one; :meth:`abspo.weights.distributed.Collective.sum`), so N processes on B/N sequences each get exactly the
advantages of one process on B. GRPO needs none: a group (the games of one seed) never spans processes.

KL "in the loss" uses the k3 estimator ``exp(r) - r - 1`` with ``r = log pi_anchor - log pi``, which is
non-negative and unbiased for KL(pi || pi_anchor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Reduce = Callable[[Tensor], Tensor]
"""Sums a tensor over the processes of a data-parallel run (the identity on one process)."""


def no_reduce(x: Tensor) -> Tensor:
    return x


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None, reduce: Reduce = no_reduce) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1 (over all processes' entries with ``reduce``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        total = reduce(torch.stack([(x * mask).sum(), mask.sum()]))
        return total[0] / total[1].clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8, reduce: Reduce = no_reduce) -> Tensor:
    """(x - mean) / std over masked entries; masked-out entries become 0. Constant input gives 0, not NaN."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask, reduce=reduce)
    var = masked_mean((x - mean) ** 2, mask, reduce=reduce)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k1 estimate of KL(pi || ref): log pi - log ref (unbiased, can be negative per token)."""
    return logp - ref_logp


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate: exp(ref - logp) - (ref - logp) - 1 (non-negative, low variance)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def reward_to_go(token_rewards: Tensor, mask: Tensor) -> Tensor:
    """Sum of the (masked) per-token rewards from each token to the end of its sequence [B, T]."""
    mask = mask.to(token_rewards.dtype)
    return (token_rewards * mask).flip(-1).cumsum(-1).flip(-1) * mask


def kl_penalty_to_go(kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """[B, T] the k1 KL penalty's share of each token's advantage: ``-kl_coef`` times its reward-to-go. Per
    sequence (no batch statistic), so it can be added to GRPO's task advantages wherever ``kl`` is known."""
    return -kl_coef * reward_to_go(kl, mask)


def reinforce_pp_returns(rewards: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Un-normalised REINFORCE++ returns [B, T]: reward-to-go of (-kl_coef * kl per token + reward at the end)."""
    mask = mask.to(kl.dtype)
    token_rewards = -kl_coef * kl * mask
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)
    token_rewards = token_rewards + last.to(kl.dtype) * rewards.to(kl.dtype).unsqueeze(-1)
    return reward_to_go(token_rewards, mask)


def reinforce_pp_advantages(rewards: Tensor, kl: Tensor, mask: Tensor, kl_coef: float,
                            reduce: Reduce = no_reduce) -> Tensor:
    """REINFORCE++ advantages [B, T]: returns whitened over every token of the batch."""
    return masked_whiten(reinforce_pp_returns(rewards, kl, mask, kl_coef), mask, reduce=reduce)


def normalize_rewards(rewards: Tensor, eps: float = 1e-8, reduce: Reduce = no_reduce) -> Tensor:
    """Batch reward normalisation (zero mean, unit std); all-equal rewards give zeros."""
    ones = torch.ones_like(rewards)
    centered = rewards - masked_mean(rewards, ones, reduce=reduce)
    return centered * torch.rsqrt(masked_mean(centered.pow(2), ones, reduce=reduce) + eps)


def group_sums(rewards: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(rewards in float32, each sample's group index, each group's size, each group's reward sum). Groups are
    found by id, not by position: any order and uneven sizes work (TRL's two RLOO versions lay groups out in
    opposite orders)."""
    _, inverse, counts = torch.unique(groups.to(rewards.device), return_inverse=True, return_counts=True)
    rewards = rewards.to(torch.float32)
    sums = torch.zeros(len(counts), dtype=rewards.dtype, device=rewards.device).index_add_(0, inverse, rewards)
    return rewards, inverse, counts, sums


def grpo_advantages(rewards: Tensor, groups: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-sample advantages [B]: reward standardised within its group (samples of the same prompt)."""
    rewards, inverse, counts, sums = group_sums(rewards, groups)
    means = sums / counts
    sq = torch.zeros_like(sums).index_add_(0, inverse, (rewards - means[inverse]) ** 2)
    # Unbiased std as in GRPO; a group of one has no spread and gets advantage 0.
    std = torch.sqrt(sq / (counts - 1).clamp(min=1))
    return (rewards - means[inverse]) / (std[inverse] + eps)


def rloo_advantages(rewards: Tensor, groups: Tensor) -> Tensor:
    """Per-sample advantages [B]: reward minus the mean reward of the other samples of its group (leave-one-out).
    A group of one has no other sample and gets 0 (TRL before v0.29 divided by zero there)."""
    rewards, inverse, counts, sums = group_sums(rewards, groups)
    size = counts[inverse].to(rewards.dtype)
    others = (sums[inverse] - rewards) / (size - 1).clamp(min=1)
    return torch.where(size > 1, rewards - others, torch.zeros_like(rewards))


GROUP_ESTIMATORS = {"grpo": grpo_advantages, "rloo": rloo_advantages}
"""Estimators whose baseline is the group of games of one seed (``group_size`` of them)."""

NO_SPREAD = 1e-8
"""A batch's reward variance at or below which its rewards count as all equal (the eps of normalisation)."""


def reward_std(rewards: Tensor, reduce: Reduce = no_reduce) -> Tensor:
    """The (population) standard deviation of sequence rewards [B] over every process's share."""
    ones = torch.ones_like(rewards, dtype=torch.float32)
    rewards = rewards.to(torch.float32)
    centered = rewards - masked_mean(rewards, ones, reduce=reduce)
    return masked_mean(centered.pow(2), ones, reduce=reduce).sqrt()


def policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-level policy-gradient loss, mean over all real tokens of the batch.

    ``ratio = pi / pi_old``; with ``clip_eps`` the PPO clipped objective. Returns (loss, clip fraction).
    With one update epoch ``old_logp = logp.detach()``, the ratio is 1 and this is plain REINFORCE.
    ``token_weights`` [B, T] (no gradient) multiply each token's term after the clip: the truncated importance
    weights of turns another engine sampled (:func:`truncated_is_weights`).
    """
    ratio = torch.exp(logp - old_logp)
    loss = -advantages * ratio
    if clip_eps is None:
        clip_frac = torch.zeros((), device=logp.device)
    else:
        clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
        clip_frac = masked_mean((clipped > loss).to(logp.dtype), mask)
        loss = torch.maximum(loss, clipped)
    if token_weights is not None:
        loss = loss * token_weights.detach()
    return masked_mean(loss, mask), clip_frac


def truncated_is_weights(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """[B, T] min(pi_old / pi_sampler, cap) per token, 0 on padding: the truncated importance weights of turns
    sampled by another engine (vLLM) than the one that scores them (verl's and OpenRLHF's TIS). Only the top is
    capped: a token the sampler over-weighted gets a small weight, as importance sampling asks."""
    return torch.exp(old_logp - sampler_logp).clamp(max=cap) * mask.to(old_logp.dtype)


# -- the two choices of an update, in one place each ---------------------------------------------------------


def advantages(
    estimator: str,
    rewards: Tensor,
    kl: Tensor,
    mask: Tensor,
    kl_coef: float,
    groups: Tensor | None = None,
    normalize_rewards_first: bool = True,
    reduce: Reduce = no_reduce,
) -> Tensor:
    """Per-token advantages [B, T] of one role's batch.

    ``rewards`` [B] are the task rewards (one per sequence); ``kl`` [B, T] the per-token KL penalty to put in the
    reward (k1, or zeros when the KL goes in the loss instead). ``reinforce_pp``: (optionally normalised) rewards
    plus the per-token penalty, reward-to-go, whitened over the batch's tokens; a batch of equal rewards gets the
    penalty's reward-to-go unwhitened (module docstring). ``grpo`` / ``rloo``: the task reward's group advantage
    (:data:`GROUP_ESTIMATORS`), then minus ``kl_coef`` times the penalty's reward-to-go. ``reduce`` makes the batch
    statistics span every process of a data-parallel run (module docstring).
    """
    mask = mask.to(kl.dtype)
    penalty = kl_penalty_to_go(kl, mask, kl_coef)
    if estimator in GROUP_ESTIMATORS:
        if groups is None:
            raise ValueError(f"{estimator} needs the group of every sequence")
        task = GROUP_ESTIMATORS[estimator](rewards, groups).to(kl.dtype)
        return (task.unsqueeze(-1) + penalty) * mask
    if estimator == "reinforce_pp":
        seq = normalize_rewards(rewards, reduce=reduce) if normalize_rewards_first else rewards
        whitened = reinforce_pp_advantages(seq, kl, mask, kl_coef, reduce)
        no_task_signal = reward_std(rewards, reduce).pow(2) <= NO_SPREAD
        return torch.where(no_task_signal, penalty * mask, whitened)
    raise ValueError(f"unknown estimator {estimator!r}")


def objective(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float | None,
    kl_coef: float,
    kl_in_loss: bool,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The loss one role minimises on one (micro-)batch, and the clip fraction.

    The policy-gradient term (PPO-clipped when ``clip_eps`` is given), plus ``kl_coef`` times the k3 estimate of
    KL(pi || anchor) per token when the KL is in the loss (``kl_in_loss``; otherwise it is already in the
    advantages). ``token_weights`` weight the policy-gradient term only (:func:`policy_loss`).
    """
    loss, clip_frac = policy_loss(logp, old_logp, advantages, mask, clip_eps, token_weights)
    if kl_in_loss:
        loss = loss + kl_coef * masked_mean(kl_k3(logp, ref_logp), mask)
    return loss, clip_frac
