"""Typed configs of the training step (algorithm, role schedule, optimizers).

Each field's docstring is its ``--help`` text in ``abspo fit --help``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from abspo.core.errors import ConfigError


@dataclass
class AlgorithmConfig:
    """Policy-gradient update of each role."""

    estimator: Literal["reinforce_pp", "grpo", "rloo"] = "reinforce_pp"
    """reinforce_pp: REINFORCE++ (batch-whitened reward-to-go, as in Self-RedTeam); grpo: group-standardised
    rewards over group_size games per seed; rloo: reward minus the mean of the group's other games
    (leave-one-out), unscaled by the group's spread."""
    group_size: int = 1
    """GRPO, RLOO: games played per seed (the attacker's group is its seed's rewrites). Must be >= 2 for them."""
    normalize_rewards: bool = True
    """REINFORCE++: standardise each role's sequence rewards over the batch before adding the KL penalty."""
    kl_coef: float = 0.01
    """Weight of the KL penalty to the anchor (the frozen base)."""
    kl_mode: Literal["reward_k1", "loss_k3"] = "reward_k1"
    """reward_k1: per-token k1 penalty inside the reward (Self-RedTeam); loss_k3: k3 estimator added to the loss."""
    kl_precision: Literal["model", "float32"] = "model"
    """Arithmetic of the two no-gradient passes the KL compares (the role before its update, and the anchor).
    model: the base's dtype. float32: float32 ops on the 16-bit weights, no float32 copy of them
    (abspo.rl.precision): with a bfloat16 base each pass otherwise rounds its own way, and on SmolLM2 a near-zero
    adapter reads a KL of 2.9e-3 per token instead of 4.3e-7, a floor as large as the KL a run starts with.
    Costs float32 matmuls in those passes (2.0x their time on a CPU with bf16 instructions; unmeasured on GPUs)
    and one float32 copy of the largest weight (the LM head); with a float32 base (and no autocast) it changes no
    figure, but GRPO recomputes the role's pass. Not under FSDP2 yet. With reward_k1 and one update
    epoch only (loss_k3 and later epochs compare against the gradient pass, which stays in the model's dtype)."""
    update_epochs: int = 1
    """Passes over each batch of games, each ending in an optimizer step of the role (PPO-style reuse): the
    second pass sees the weights the first one moved, its ratio pi / pi_old is taken against the log-probs the
    games were sampled with, and the clip (clip_eps) acts. Each pass counts as one optimizer step."""
    clip_eps: float = 0.2
    """PPO ratio clip range, used when update_epochs > 1 (with one pass the ratio is exactly 1)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass; gradients of a batch are accumulated over its micro-batches (rows
    sorted by length first, so that a micro-batch pads to the length of similar rows)."""
    micro_batch_tokens: int | None = None
    """At most this many padded tokens (rows x (longest prompt + longest completion)) per micro-batch, on top of
    micro_batch_size: the memory of a gradient pass grows with padded tokens, so a cap bounds it whatever the turn
    lengths, and short turns still run many to a pass (verl's dynamic batch size). A row longer than the cap runs
    alone. None: rows only. The gradients are the same (abspo.rl.micro_batches)."""
    old_logprobs: Literal["recompute", "sampler"] = "recompute"
    """Where the log-probs under the role that sampled a turn come from, when the update needs them before its
    gradient pass (REINFORCE++ with kl_mode reward_k1, kl_precision float32, or update_epochs > 1; otherwise no
    pass computes them: the gradient pass's own detached log-probs are the same numbers). recompute: a no-gradient forward of the role
    over the turns (exact). sampler: the log-probs the sampler drew each token with, recorded during the rollout
    (saves that forward; in float32 they differ from a recompute by ~1e-5 per token, measured on SmolLM2, but in
    bfloat16 by ~0.04, so only a float32 base may use it, and only with one update epoch)."""
    accumulate_batches: int = 1
    """Batches of games whose gradients are summed before each optimizer step of a role."""
    rollout_is_cap: float | None = 2.0
    """vLLM backend: truncated importance sampling against the engine's own sampling log-probs (as verl and
    OpenRLHF). The engine samples with other kernels than the trainer scores with, so the turns come from a
    slightly different policy than the one the update differentiates; each token's policy-gradient term is weighted
    by min(pi_trainer / pi_engine, cap), with pi_trainer the role before its update (no gradient through the
    weight; the KL term is not weighted). None: no correction. The hf backend samples with the trainer's own
    model and ignores it."""
    max_grad_norm: float | None = 1.0
    """Clip each role's gradient to this global L2 norm (None: no clipping)."""
    activation_checkpointing: bool = False
    """Keep only each decoder layer's input in the gradient pass and recompute the rest in backward: about a
    third more compute for a fraction of the activation memory (abspo plan --activation-checkpointing shows it).
    The gradients are the same."""

    def validate(self) -> None:
        if self.estimator in ("grpo", "rloo") and self.group_size < 2:
            raise ConfigError("model.algorithm.group_size", f"{self.estimator} needs at least 2 games per seed, "
                              f"got {self.group_size}",
                              "set group_size: 4 (or use estimator: reinforce_pp)")
        if self.rollout_is_cap is not None and not self.rollout_is_cap >= 1.0:
            raise ConfigError("model.algorithm.rollout_is_cap", f"must be >= 1 (a weight cap), got "
                              f"{self.rollout_is_cap}", "use 2.0 (verl's and OpenRLHF's default), or null for none")
        for key in ("group_size", "update_epochs", "micro_batch_size", "accumulate_batches", "micro_batch_tokens"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"model.algorithm.{key}", f"must be >= 1, got {getattr(self, key)}", "use a positive integer")
        if self.old_logprobs == "sampler" and self.update_epochs > 1:
            raise ConfigError("model.algorithm.old_logprobs", "sampler log-probs cannot be the PPO ratio's denominator "
                              f"(update_epochs={self.update_epochs}): they differ from a recompute by rounding, so the "
                              "first pass's ratio would not be exactly 1", "use old_logprobs: recompute")
        if self.kl_precision == "float32" and self.old_logprobs == "sampler":
            raise ConfigError("model.algorithm.kl_precision", "float32 KL passes recompute the role's log-probs; "
                              "old_logprobs: sampler takes them from the sampler instead",
                              "use old_logprobs: recompute with kl_precision: float32")
        if self.kl_precision == "float32" and (self.kl_mode != "reward_k1" or self.update_epochs > 1):
            raise ConfigError("model.algorithm.kl_precision", "float32 scoring covers the two no-gradient passes "
                              "of a reward_k1 KL with one update epoch; here the KL or the PPO ratio would compare "
                              f"them with the gradient pass (kl_mode={self.kl_mode}, update_epochs="
                              f"{self.update_epochs}), which computes in the model's dtype",
                              "use kl_mode: reward_k1 and update_epochs: 1, or kl_precision: model")
        if self.update_epochs > 1 and self.accumulate_batches > 1:
            # Accumulating over batches means one step per k batches; several passes mean several steps per batch.
            raise ConfigError("model.algorithm.update_epochs", f"update_epochs={self.update_epochs} (a step per pass) "
                              f"cannot be combined with accumulate_batches={self.accumulate_batches} (a step per "
                              f"{self.accumulate_batches} batches)", "set one of them to 1")


@dataclass
class ScheduleConfig:
    """Which role learns on which batch."""

    mode: Literal["alternate", "phases"] = "alternate"
    """alternate: every batch, update the attacker, then the defender. phases: phase_steps batches updating only
    the attacker against a frozen defender, then phase_steps batches the other way round, and so on."""
    phase_steps: int = 100
    """Batches per phase in phases mode."""
    first: Literal["attacker", "defender"] = "attacker"
    """Role updated first (first in each batch, or in the first phase)."""

    def validate(self) -> None:
        if self.phase_steps < 1:
            raise ConfigError("model.schedule.phase_steps", f"must be >= 1, got {self.phase_steps}",
                              "use the number of batches per phase, e.g. 100")

    def roles_to_update(self, batch_index: int) -> list[str]:
        order = [self.first, "defender" if self.first == "attacker" else "attacker"]
        if self.mode == "alternate":
            return order
        return [order[(batch_index // self.phase_steps) % 2]]


@dataclass
class OptimizerConfig:
    """One role's optimizer and learning-rate schedule."""

    name: str = "AdamW"
    """A class in torch.optim."""
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    """Linear warm-up over this many optimizer steps of this role."""
    decay: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate decay after warm-up, to 0 at decay_steps."""
    decay_steps: int | None = None
    """Optimizer steps of this role at which the decay reaches 0 (required for linear/cosine)."""

    def validate(self, key: str) -> tuple[type[torch.optim.Optimizer], dict]:
        """The optimizer class and its keyword arguments, or a ConfigError naming ``key``'s field. Called when
        the module is built, so that a bad setting fails before a run writes anything."""
        cls = getattr(torch.optim, self.name, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
            raise ConfigError(f"{key}.name", f"{self.name!r} is not an optimizer in torch.optim", "use e.g. AdamW, Adam or SGD")
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {"lr": self.lr}
        if "weight_decay" in accepted:
            kwargs["weight_decay"] = self.weight_decay
        elif self.weight_decay:
            raise ConfigError(f"{key}.weight_decay", f"{self.name} has no weight decay", "set weight_decay: 0")
        if "betas" in accepted:
            kwargs["betas"] = tuple(self.betas)
        if self.decay != "constant" and not self.decay_steps:
            raise ConfigError(f"{key}.decay_steps", f"decay {self.decay!r} needs decay_steps", "set decay_steps or decay: constant")
        return cls, kwargs

    def build(self, params, key: str) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        cls, kwargs = self.validate(key)
        optimizer = cls(params, **kwargs)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)

    def state_settings(self) -> dict:
        """The settings a checkpoint's optimizer and scheduler state carry with it (a resume restores them from
        the state, whatever the config says); the warm-up and decay are read from the config at every step."""
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay, "betas": list(self.betas)}

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        span = max(1, self.decay_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 1.0 - progress if self.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def default_optimizers() -> dict[str, OptimizerConfig]:
    # LoRA wants ~10x the full fine-tuning rate; the defender learns faster than the attacker, as in the
    # dual-LoRA reproduction (1e-5 / 4e-5 at 3B scale).
    return {"attacker": OptimizerConfig(lr=1e-4), "defender": OptimizerConfig(lr=2e-4)}


@dataclass
class LoggingConfig:
    """What the trainer writes besides scalars."""

    samples_every_n_steps: int = 10
    """Write a text table of sample games to TensorBoard every N batches (0: never)."""
    samples_per_table: int = 4
    """Games shown in each table."""
    check_replicas_every_n_batches: int = 10
    """Data parallel: every N batches, check that all processes hold the same adapters (a checksum each; 0: never)."""
    extra: dict = field(default_factory=dict)


def stacked_config_files(paths: list[str], key: str = "--config") -> dict:
    """The YAML files ``abspo fit --config a.yaml --config b.yaml`` would read, merged in order (later keys
    override, nested sections merge): what tools that plan or drive a run read without starting one."""
    from abspo.core.parse_errors import read_config_file

    def merge(into: dict, new: dict) -> dict:
        for k, v in new.items():
            into[k] = merge(dict(into.get(k) or {}), v) if isinstance(v, dict) and isinstance(into.get(k), dict) else v
        return into

    out: dict = {}
    for path in paths:
        merge(out, read_config_file(path, key))
    return out
