"""One policy-gradient update of one adapter, from the scored turns of the roles it plays.

Three steps (:meth:`PolicyUpdate.update`):

1. :meth:`~PolicyUpdate.rollout_batch`: every scored turn of the roles, right-padded to one width, with its
   log-probs under the anchor (and, where they must be known before the gradient pass, under the role), and its
   advantages (REINFORCE++, GRPO) with the KL penalty, normalised per role.
2. :meth:`~PolicyUpdate.gradient_pass`: length-sorted micro-batches, each one's token-level loss
   (:func:`policy_loss`, the same function the collapse diagnostics differentiate) weighted by its share of the
   batch's tokens and backpropagated into the adapter's ``.grad``.
3. :meth:`~PolicyUpdate.optimizer_step`: sum the gradient over processes, clip, step; a non-finite loss or
   gradient skips the step (:mod:`abspo.training.guards`).

The update runs no forward pass it does not need (``SelfPlayModule.old_logprobs_source``): with one epoch the
"old" log-probs equal the gradient pass's own, detached, so they get a pass of their own only where they must be
known before it (REINFORCE++'s batch whitening of a k1 KL reward), or come from the sampler. Every phase is
timed (``perf/<phase>_s``). How processes keep step (one, DDP, FSDP2) is the layout's business
(:mod:`abspo.training.lockstep`), not the math's.

:class:`PolicyUpdate` reads the module's current settings at each call (``module.algorithm``, ``module.bank``,
...), so a setting changed on the module is seen here.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from abspo.rl import algorithms as alg
from abspo.core.config import AlgorithmConfig
from abspo.game.rules import Exchange
from abspo.rl.micro_batches import micro_batches
from abspo.rl.precision import float32_compute
from abspo.rl.rollout import ScoringBatch, build_scoring_batch, completion_logprobs
from abspo.weights.sharding import full_tensor


@dataclass
class RolloutBatch:
    """What one adapter's update trains on: every scored turn of its roles, right-padded to one width ``T``."""

    prompts: list[list[int]]
    completions: list[list[int]]
    advantages: torch.Tensor
    """[N, T] per-token advantages (zero on padding)."""
    old_logp: torch.Tensor | None
    """[N, T] log-probs under the role that sampled the turn (the PPO ratio's denominator); None when the gradient
    pass takes its own detached log-probs instead (one epoch, nothing needed them before it)."""
    ref_logp: torch.Tensor
    """[N, T] log-probs under the anchor."""
    stats: dict[str, float]
    roles: list[str]
    """The role that played each row (a shared adapter's batch holds both roles' turns)."""
    sampler_logp: torch.Tensor | None = None
    """[N, T] log-probs the rollout engine sampled each token with, when another engine than the trainer's forward
    sampled the turns (vLLM) and truncated importance sampling is on; else None."""

    def rows(self, rows: list[int], pad_id: int, device) -> tuple[ScoringBatch, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor | None, torch.Tensor | None]:
        """Rows ``rows`` as a scoring batch, with their advantages, anchor log-probs, old log-probs and sampler
        log-probs (each None when the rollout has none) cut to its width."""
        batch = build_scoring_batch([self.prompts[i] for i in rows], [self.completions[i] for i in rows], pad_id,
                                    device)
        t = batch.completion_ids.shape[1]
        index = torch.tensor(rows)
        adv, ref = (x[index, :t].to(device) for x in (self.advantages, self.ref_logp))
        old, sampler = (None if x is None else x[index, :t].to(device) for x in (self.old_logp, self.sampler_logp))
        return batch, adv, ref, old, sampler


def policy_loss(cfg: AlgorithmConfig, logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, adv: torch.Tensor,
                mask: torch.Tensor, on_policy: bool, sampler: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, clipped fraction) of one micro-batch: the objective the gradient pass backpropagates, and the one
    the collapse diagnostics differentiate. On-policy (one epoch) the ratio is exactly 1 and nothing is clipped.
    With the rollout engine's log-probs (``sampler``), each token's term is weighted by the truncated importance
    weight of the role before its update (``old``, or this pass's own log-probs on-policy) over the engine's."""
    old = logp.detach() if on_policy else old
    weights = None if sampler is None else alg.truncated_is_weights(old, sampler, mask, cfg.rollout_is_cap)
    return alg.objective(logp, old, ref, adv, mask, None if on_policy else cfg.clip_eps, cfg.kl_coef,
                         kl_in_loss=cfg.kl_mode == "loss_k3", token_weights=weights)


def role_samples(role: str, exchanges: list[Exchange]) -> list[tuple]:
    """(prompt ids, completion ids, reward, group, sampler log-probs or None) for every scored turn the role
    played."""
    return [(*e.turns[role], e.rewards[role], e.group, e.sampled_logprobs.get(role))
            for e in exchanges if role in e.rewards and role in e.turns]


def sampler_logprobs(samples: list[tuple], like: torch.Tensor) -> torch.Tensor:
    """[N, T] the log-probs the sampler recorded for each sample's tokens, right-padded to ``like``'s width."""
    if not samples:
        return torch.zeros_like(like)
    return torch.stack([pad_to(torch.tensor([s[4]], dtype=torch.float32), like.shape[1])[0] for s in samples])


def pad_to(x: torch.Tensor, t: int) -> torch.Tensor:
    """``x`` [N, T'] right-padded with zeros to width ``t``."""
    return torch.nn.functional.pad(x, (0, t - x.shape[1]))


class PolicyUpdate:
    """The update of each adapter, for a :class:`~abspo.training.module.SelfPlayModule` (see the module docstring)."""

    def __init__(self, module):
        self.module = module
        self.updates: dict[str, int] = defaultdict(int)  # adapter -> batches it was updated on (accumulation)
        self.last_rollouts: dict[str, RolloutBatch] = {}  # adapter -> the rollout batch of its latest update

    def pending(self, adapter: str) -> bool:
        """Whether ``adapter`` holds gradients summed since its last step (mid-accumulation)."""
        return bool(self.updates[adapter] % self.module.algorithm.accumulate_batches)

    def update(self, adapter: str, roles: list[str], exchanges: list[Exchange], opt, sched) -> dict[str, float]:
        """One update of ``adapter`` from the games of ``roles``: the rollout batch, then per epoch a gradient pass
        and, when due, the optimizer step. Returns logging stats keyed ``<role>/...`` for per-role figures and
        ``<roles joined by '/'>/...`` for the adapter's."""
        cfg = self.module.algorithm
        name = "/".join(roles)
        rollout = self.rollout_batch(roles, exchanges)
        self.updates[adapter] += 1
        due = self.updates[adapter] % cfg.accumulate_batches == 0
        if rollout is None:  # no scored turn of these roles on any process (e.g. the judge labelled nothing)
            if due:  # the step still counts (max_steps = batches)
                for _ in range(cfg.update_epochs):
                    self.optimizer_step(adapter, opt, sched, with_gradient=cfg.accumulate_batches > 1)
            return {f"{name}/skipped": 1.0}
        stats = dict(rollout.stats)
        self.last_rollouts[adapter] = rollout  # what the update trained on (diagnostics read it)
        for _ in range(cfg.update_epochs):
            passed = self.gradient_pass(roles, rollout)
            if due:
                passed.update(self.optimizer_step(adapter, opt, sched, finite_loss=math.isfinite(passed["loss"])))
            for key, value in passed.items():  # the last pass's figures (clip_frac is 0 on the first)
                per_role = key.split("/")[0] in roles  # <role>/kl, measured here when no pass before did
                stats[key if per_role else f"{name}/{key}"] = value
        # Every process's turns, as every other figure of the update is (a process holds its share of them).
        stats[f"{name}/samples"] = float(self.module.collective.sum(torch.tensor(len(rollout.prompts))))
        return stats

    # -- step 1 -------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout_batch(self, roles: list[str], exchanges: list[Exchange]) -> RolloutBatch | None:
        """Every scored turn of ``roles``, padded to one width, with its log-probs under the role that played it
        and under the anchor, and its advantages (normalised per role). None when there is none."""
        m = self.module
        cfg = m.algorithm
        reduce = m.collective.sum  # batch statistics over every process's share (identity on one process)
        source = m.old_logprobs_source
        prompts, completions, advantages, olds, refs, row_roles, samplers = [], [], [], [], [], [], []
        # Turns another engine sampled (vLLM): keep its log-probs for truncated importance sampling.
        importance = m.rollout_cfg.backend == "vllm" and cfg.rollout_is_cap is not None
        stats: dict[str, float] = {}
        for role in roles:
            samples = role_samples(role, exchanges)
            if not int(reduce(torch.tensor(len(samples)))):
                continue  # no process has a turn of this role
            # A process whose share has none still takes part in every reduction (and, sharded, every forward).
            old, ref, mask = self.reference_logprobs(role, samples, with_role=source == "recompute")
            rewards = torch.tensor([s[2] for s in samples], dtype=torch.float32)
            if source == "sampler":
                old = sampler_logprobs(samples, ref)
            # With the gradient pass as the source, the k1 penalty (GRPO only: it is per sequence) is added there.
            kl = alg.kl_k1(old, ref) if cfg.kl_mode == "reward_k1" and old is not None else torch.zeros_like(ref)
            groups = torch.tensor([s[3] for s in samples], dtype=torch.long)
            adv = alg.advantages(cfg.estimator, rewards, kl, mask, cfg.kl_coef, groups, cfg.normalize_rewards, reduce)
            # 0 when the role's turns all earned the same: no task signal, only the anchor's pull (rl.algorithms)
            stats[f"{role}/reward_std"] = float(alg.reward_std(rewards, reduce))
            prompts += [s[0] for s in samples]
            completions += [s[1] for s in samples]
            row_roles += [role] * len(samples)
            advantages.append(adv)
            olds.append(old)
            refs.append(ref)
            if importance:
                samplers.append(sampler_logprobs(samples, ref))
            if old is not None:  # else the gradient pass measures it
                stats[f"{role}/kl"] = float(alg.masked_mean(alg.kl_k3(old, ref), mask, reduce=reduce))
        if not refs:
            return None
        t = max(x.shape[1] for x in refs)  # one width for every role: a shared adapter mixes them in micro-batches
        cat = lambda xs: torch.cat([pad_to(x, t) for x in xs])  # noqa: E731
        old = None if source == "gradient_pass" else cat(olds)
        sampler = cat(samplers) if importance else None
        return RolloutBatch(prompts, completions, cat(advantages), old, cat(refs), stats, row_roles, sampler)

    @torch.no_grad()
    def reference_logprobs(self, role: str, samples, with_role: bool = True):
        """Log-probs [N, T] of the sampled completions under the anchor and (``with_role``) under the role before
        its update, at the sampling temperature, with the completion mask: (old or None, ref, mask). With
        ``kl_precision: float32`` both passes compute in float32 (:mod:`abspo.rl.precision`), so that their difference,
        the KL, is not mostly the rounding of two 16-bit forwards."""
        m = self.module
        n, t = len(samples), max([1] + [len(s[1]) for s in samples])
        old, ref, mask = (torch.zeros(n, t) for _ in range(3))
        device_type = m.device.type
        precise = ((lambda: float32_compute(device_type)) if m.algorithm.kl_precision == "float32"
                   else contextlib.nullcontext)
        for rows in self.micro_batch_rows([s[0] for s in samples], [s[1] for s in samples]):
            chunk = [samples[i] for i in rows]
            batch = (build_scoring_batch([s[0] for s in chunk], [s[1] for s in chunk], m.pad_id, m.device)
                     if chunk else self.idle_batch())
            scored = {}
            if with_role:
                with m.clock("score/old"), m.bank.role(role) as model, precise():
                    scored["old"] = self.score(model, batch)
            with m.clock("score/anchor"), m.bank.anchor(role) as model, precise():
                scored["ref"] = self.score(model, batch)
            if chunk:
                index, width = torch.tensor(rows), batch.completion_ids.shape[1]
                ref[index, :width] = scored["ref"].cpu()
                mask[index, :width] = batch.completion_mask.cpu().float()
                if with_role:
                    old[index, :width] = scored["old"].cpu()
        return (old if with_role else None), ref, mask

    def score(self, model, batch) -> torch.Tensor:
        """Completion log-probs of ``batch`` under ``model``, with no gradient, as an ordinary tensor."""
        with self.module.layout.no_grad():
            logp, _ = completion_logprobs(model, batch, temperature=self.module.game.temperature)
        return logp.clone() if logp.is_inference() else logp

    # -- step 2 -------------------------------------------------------------------------------------
    def gradient_pass(self, roles: list[str], rollout: RolloutBatch) -> dict[str, float]:
        """One pass over the rollout batch in length-sorted micro-batches, backpropagating each one's token-mean
        loss (weighted by its share of the batch's tokens) into the adapter's ``.grad``. Every role in ``roles``
        routes to the adapter being updated.

        Without old log-probs in the rollout (``old_logprobs_source == "gradient_pass"``) the pass's own detached
        log-probs stand in for them: the ratio is 1, GRPO's k1 penalty is added to the advantages here (it is per
        sequence, so nothing before needed it), and ``<role>/kl`` is measured here."""
        m = self.module
        cfg = m.algorithm
        collective = m.collective
        total_tokens = int(collective.sum(torch.tensor(sum(len(c) for c in rollout.completions))))
        on_policy = cfg.update_epochs == 1  # then the ratio is exactly 1 and old = the live log-probs, detached
        live_old = rollout.old_logp is None
        kl_sums = torch.zeros(2, len(roles), dtype=torch.float64)  # per role: k3 summed over tokens, token count
        loss_sum, clip_sum, entropy_sum = 0.0, 0.0, 0.0
        is_sums = torch.zeros(3, dtype=torch.float64)  # importance weights (uncapped) summed, tokens capped, tokens
        grad_scale = m.layout.gradient_scale()
        with m.clock("update/gradient"), m.bank.role(roles[0]), m.bank.update_mode():
            for rows in self.micro_batch_rows(rollout.prompts, rollout.completions, rollout.roles):
                if not rows:  # lockstep, this process is out of rows: a zero-weighted pass
                    logp, _ = completion_logprobs(m.bank.model, self.idle_batch(), temperature=m.game.temperature)
                    m.accumulate_gradient(logp.sum() * 0.0)
                    continue
                batch, adv, ref, old, sampler = rollout.rows(rows, m.pad_id, m.device)
                logp, entropy = completion_logprobs(m.bank.model, batch, with_entropy=True,
                                                    temperature=m.game.temperature)
                mask = batch.completion_mask
                if live_old:
                    old = logp.detach()
                    if cfg.kl_mode == "reward_k1":
                        adv = adv + alg.kl_penalty_to_go(alg.kl_k1(old, ref), mask, cfg.kl_coef)
                    k3 = (alg.kl_k3(old, ref) * mask).sum(-1).double().cpu()
                    for r, role in enumerate(roles):
                        mine = torch.tensor([rollout.roles[i] == role for i in rows])
                        kl_sums[:, r] += torch.stack([k3[mine].sum(), mask.sum(-1).cpu()[mine].sum().double()])
                loss, clip_frac = policy_loss(cfg, logp, old, ref, adv, mask, on_policy, sampler)
                if sampler is not None:  # how far the engine's policy was from the trainer's, and how often capped
                    w = alg.truncated_is_weights(logp.detach() if on_policy else old, sampler, mask,
                                                 float("inf"))
                    is_sums += torch.stack([w.sum(), (w > cfg.rollout_is_cap).sum(), mask.sum()]).double().cpu()
                weight = mask.sum().item() / total_tokens
                m.accumulate_gradient(loss * (weight * grad_scale / cfg.accumulate_batches))
                loss_sum += loss.item() * weight
                clip_sum += clip_frac.item() * weight
                entropy_sum += alg.masked_mean(entropy, mask).item() * weight
        loss_sum, entropy_sum, clip_sum = collective.sum(torch.tensor([loss_sum, entropy_sum, clip_sum])).tolist()
        out = {"loss": loss_sum, "entropy": entropy_sum, "clip_frac": clip_sum}
        if rollout.sampler_logp is not None:
            is_sums = collective.sum(is_sums)
            out["is_weight"] = float(is_sums[0] / is_sums[2].clamp(min=1))
            out["is_capped_frac"] = float(is_sums[1] / is_sums[2].clamp(min=1))
        if live_old:
            kl_sums = collective.sum(kl_sums)
            for r, role in enumerate(roles):
                if kl_sums[1, r] > 0:
                    out[f"{role}/kl"] = float(kl_sums[0, r] / kl_sums[1, r])
        return out

    def micro_batch_rows(self, prompts: list[list[int]], completions: list[list[int]],
                         roles: list[str] | None = None) -> list[list[int]]:
        """The row indices of each micro-batch (:func:`abspo.rl.micro_batches.micro_batches`: by length, one role
        each, at most ``micro_batch_size`` rows and ``micro_batch_tokens`` padded tokens, largest first; on
        SmolLM2's first batch, a shared adapter's largest micro-batch had 1,624 padded tokens with the roles mixed,
        1,085 apart), followed by the idle ones the layout needs (:mod:`abspo.training.lockstep`)."""
        cfg = self.module.algorithm
        chunks = micro_batches([len(p) for p in prompts], [len(c) for c in completions], roles,
                               cfg.micro_batch_size, cfg.micro_batch_tokens)
        return self.module.layout.micro_batch_rows(chunks)

    def idle_batch(self) -> ScoringBatch:
        """A one-token batch for a lockstep pass of a process that has no rows left."""
        pad = self.module.pad_id
        return build_scoring_batch([[pad]], [[pad]], pad, self.module.device)

    # -- step 3 -------------------------------------------------------------------------------------
    def optimizer_step(self, adapter: str, opt, sched, finite_loss: bool = True,
                       with_gradient: bool = True) -> dict[str, float]:
        """Sum the adapter's gradient over processes (data parallel), clip it, step its optimizer and scheduler,
        clear its gradient.

        A non-finite loss or gradient skips the step: the gradients are dropped before ``opt.step()``, which then
        leaves every parameter and optimizer state untouched (optimizers skip parameters without a gradient) and
        still counts as the step it was (the schedule, ``max_steps`` and resumes stay aligned). The same decision
        on every process: the norm is of the summed (or sharded) gradient. ``with_gradient=False`` (a batch with
        nothing to learn from) makes the same no-op step, so that every batch makes its optimizer steps."""
        m = self.module
        cfg = m.algorithm
        params = m.bank.adapter_parameters(adapter)
        if not with_gradient:
            for p in params:
                p.grad = None
        else:
            m.layout.sum_gradients_(params)
        grads = [p.grad for p in params if p.grad is not None]
        grad_norm = float(full_tensor(torch.nn.utils.get_total_norm(grads))) if grads else 0.0
        finite = finite_loss and math.isfinite(grad_norm)
        if with_gradient:
            if not finite:
                for p in params:
                    p.grad = None
            reason = m.guards.after_update(adapter, finite)
            if reason is not None:
                m.stop(reason)
            if finite and cfg.max_grad_norm is not None:
                m.clip_adapter_gradients(opt, params, cfg.max_grad_norm)
        lr = sched.get_last_lr()[0]
        with m.clock("update/optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        if finite and grads:
            m.adapter_changed(adapter)
        return {"grad_norm": grad_norm, "lr": lr, "skipped_nonfinite": float(not finite)}
