"""Every cross-field check of the ``model`` section and of the trainer it runs under, in one place.

A field's own range is checked by its dataclass's ``validate``; what is checked here is how settings combine
(a sampler's log-probs with a bf16 base, a static cache under FSDP2, ...). Each check raises one
:class:`~abspo.core.errors.ConfigError` naming the key, what is wrong and how to fix it. They all run before
anything is written: :func:`check_model_settings` when the module is built (before the base loads), and
:func:`check_trainer` from ``abspo fit`` before the run folder exists (and again from the module's ``setup`` for
runs driven from Python).
"""

from __future__ import annotations

from abspo.weights.bank import BankSpec
from abspo.core.config import AlgorithmConfig, OptimizerConfig, ScheduleConfig
from abspo.core.errors import ConfigError
from abspo.game.rules import GameConfig
from abspo.weights.models import BaseModel
from abspo.training.vllm_rollouts import RolloutConfig, engine_class, vllm_max_lora_rank


def check_model_settings(mode: str, base: BaseModel, bank: BankSpec, optimizers: dict[str, OptimizerConfig],
                         game: GameConfig, algorithm: AlgorithmConfig, schedule: ScheduleConfig,
                         rollout: RolloutConfig) -> None:
    """The model section's settings, each on its own and together (``bank`` and ``optimizers`` as the mode
    resolved them)."""
    rollout.hf.validate()
    algorithm.validate()
    schedule.validate()
    bank.validate()
    for adapter in optimizers:
        if adapter not in bank.adapters and mode != "shared_full":
            raise ConfigError(f"model.optimizers.{adapter}", f"no adapter named {adapter!r}",
                              f"optimizers are keyed by adapter name: {sorted(bank.adapters)}")
        optimizers[adapter].validate(f"model.optimizers.{adapter}")
    for adapter in bank.adapters if mode != "shared_full" else ():
        if adapter not in optimizers:
            raise ConfigError("model.optimizers", f"adapter {adapter!r} has no optimizer",
                              f"add `{adapter}: {{lr: 1e-4}}` under model.optimizers")
    if rollout.backend == "vllm":
        if algorithm.old_logprobs == "sampler":
            raise ConfigError("model.algorithm.old_logprobs", "the vLLM backend's sampling log-probs come from "
                              "other kernels than the trainer's forward", "use old_logprobs: recompute")
        engine_class(rollout.vllm)  # not installed: say so now, not at the first rollout
        vllm_max_lora_rank(max(spec.r for spec in bank.adapters.values()))
        if mode == "shared_full":
            raise ConfigError("model.rollout.backend", "the vLLM backend serves LoRA adapters on a frozen base; "
                              "shared_full trains the whole model, which would need a full-weight sync every "
                              "step", "use model.rollout.backend: hf with shared_full")
    if algorithm.old_logprobs == "sampler" and rollout.hf.compile:
        raise ConfigError("model.algorithm.old_logprobs", "compiled decoding's kernels round differently from the "
                          "scoring forward, so its sampling log-probs are not the update's old log-probs",
                          "use old_logprobs: recompute, or model.rollout.hf.compile: false")
    if algorithm.old_logprobs == "sampler" and base.dtype != "float32":
        raise ConfigError("model.algorithm.old_logprobs", f"sampler log-probs with a {base.dtype} base "
                          "differ from a recompute by ~0.04 per token (measured on SmolLM2), more than the KL "
                          "they feed", "use old_logprobs: recompute, or model.base.dtype: float32")
    if not game.temperature > 0:
        raise ConfigError("model.game.temperature", f"training samples with a positive temperature, got "
                          f"{game.temperature}", "use e.g. 1.0 or 0.7 (the update scores at the same temperature)")
    if game.top_p != 1.0:
        raise ConfigError("model.game.top_p", f"top_p={game.top_p}: the update scores the full "
                          "distribution, so truncated sampling would make the 'on-policy' ratio wrong",
                          "set top_p: 1.0 and lower model.game.temperature for less noisy text")
    for name, spec in bank.adapters.items() if algorithm.update_epochs > 1 else ():
        # The old log-probs come from a pass without dropout and the gradient pass runs with it: the first
        # epoch's ratio pi / pi_old would be dropout noise, not 1, and the clip would act on that noise.
        if spec.dropout > 0:
            raise ConfigError(f"model.bank.adapters.{name}.dropout", f"LoRA dropout {spec.dropout} with "
                              f"update_epochs={algorithm.update_epochs}: the old log-probs are taken without "
                              "dropout and the gradient passes with it, so the first pass's ratio is not 1",
                              "set dropout: 0 (the default, as RL trainers disable dropout), or update_epochs: 1")
    if schedule.mode == "phases" and schedule.phase_steps % algorithm.accumulate_batches:
        raise ConfigError("model.schedule.phase_steps", f"phase_steps={schedule.phase_steps} is not a multiple "
                          f"of model.algorithm.accumulate_batches={algorithm.accumulate_batches}: a role's "
                          "half-accumulated gradient would wait through the opponent's phase and step stale",
                          "make phase_steps a multiple of accumulate_batches")
    for template, key in ((game.attacker_harmful_template, "attacker_harmful_template"),
                          (game.attacker_benign_template, "attacker_benign_template")):
        if "{seed}" not in template:
            raise ConfigError(f"model.game.{key}", "the template has no {seed} placeholder",
                              "put {seed} where the seed request should appear")


def check_chat_template(tokenizer, base: BaseModel, game: GameConfig) -> None:
    """Every turn of the game is a chat turn: a tokenizer without a chat template needs the plain fallback."""
    if tokenizer is not None and not getattr(tokenizer, "chat_template", None) and not game.plain_chat_fallback:
        raise ConfigError("model.base.name_or_path", f"the tokenizer of {base.name_or_path!r} has no chat "
                          "template, and every turn of the game is a chat turn", "use an instruct/chat model, or "
                          "set model.game.plain_chat_fallback: true for 'User: ...\\nAssistant: ' turns")


def check_trainer(trainer, mode: str, base: BaseModel, algorithm: AlgorithmConfig, rollout: RolloutConfig) -> None:
    """Refuse a strategy, process count or precision the self-play loop cannot run under."""
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    from abspo.strategies import FSDP2Strategy

    strategy = trainer.strategy
    fsdp2 = isinstance(strategy, FSDP2Strategy)
    if isinstance(strategy, ModelParallelStrategy) and not fsdp2:
        raise ConfigError("trainer.strategy", "ModelParallelStrategy would save and load the frozen base in every "
                          "checkpoint (and cannot resume an adapter-only one)",
                          "use class_path: abspo.strategies.FSDP2Strategy (the same strategy, adapter-only checkpoints)")
    if trainer.world_size > 1 and not isinstance(strategy, (DDPStrategy, FSDP2Strategy)):
        raise ConfigError("trainer.strategy", f"{type(strategy).__name__} on {trainer.world_size} processes is "
                          "not supported by abspo's self-play loop (role forwards bypass a strategy's wrapper; "
                          "abspo synchronises the adapters itself under DDP and shards them under FSDP2)",
                          "use trainer.strategy: ddp, or abspo.strategies.FSDP2Strategy (docs/strategies.md)")
    if base.init_on_meta and not fsdp2:
        raise ConfigError("model.base.init_on_meta", "only FSDP2 loads a base built on the meta device (each "
                          "process its own shards)", "set init_on_meta: false, or use abspo.strategies.FSDP2Strategy")
    if rollout.backend == "vllm" and trainer.world_size > 1:
        raise ConfigError("model.rollout.backend", "the vLLM backend runs in one process (one engine beside the "
                          f"trainer), this run has {trainer.world_size}", "use model.rollout.backend: hf "
                          "with several processes")
    if fsdp2 and not strategy._save_distributed_checkpoint:  # (Lightning keeps the setting private)
        # ModelParallelStrategy would write rank 0's shards alone into one file: half of every adapter
        raise ConfigError("trainer.strategy.init_args.save_distributed_checkpoint", "FSDP2Strategy writes "
                          "adapter-only sharded checkpoints (a folder: each process its shards) and resumes from "
                          "those only", "leave it true (the default); `abspo test` reads such a folder whole")
    if fsdp2 and rollout.hf.cache != "dynamic":
        raise ConfigError("model.rollout.hf.cache", "a static cache (and compiled decoding) under FSDP2 is untested "
                          "with its lockstep generation (synced_gpus), where a hang would stall every process",
                          "use model.rollout.hf.cache: dynamic under FSDP2 (ddp allows static and compile: each process generates on its own)")
    if fsdp2 and algorithm.kl_precision == "float32":
        raise ConfigError("model.algorithm.kl_precision", "float32 KL passes under FSDP2 are not supported yet "
                          "(FSDP2 gathers a layer's weights inside the pass, which float32 arithmetic must not see)",
                          "use kl_precision: model under FSDP2, or trainer.strategy: ddp")
    if fsdp2 and mode == "shared_full":
        raise ConfigError("model.mode", "shared_full is not supported under FSDP2 (the trained policy and its "
                          "frozen reference copy are not sharded)",
                          "use trainer.strategy: ddp, or model.mode: bipolicy / shared_lora under FSDP2")
    precision = str(trainer.precision)
    if algorithm.old_logprobs == "sampler" and not precision.startswith(("32", "64")):
        raise ConfigError("model.algorithm.old_logprobs", f"sampler log-probs under trainer.precision {precision} "
                          "differ from a recompute by rounding, more than the KL they feed",
                          "use old_logprobs: recompute, or trainer.precision: 32-true")
