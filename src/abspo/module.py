"""SelfPlayModule: one batch of red-team games, then one policy-gradient update per role.

The step, in order:

1. **Play.** Each seed goes to the attacker (LoRA ``attacker`` active) or, for the unrevised share, straight
   to the defender. The defender (LoRA ``defender`` active) answers. Sampling is on-policy (temperature 1,
   no top-k by default) because the update is a policy gradient.
2. **Judge.** The judge labels every exchange; rewards come from the reward table. Exchanges with an
   unlabelled field are dropped from the update and counted.
3. **Update.** For each role due this batch (see :class:`~abspo.config.ScheduleConfig`): log-probs of its
   completions under the anchor (adapters off) and, where the advantages need them before the gradient pass,
   under the role; advantages (REINFORCE++ or GRPO) with the KL penalty, the token-level policy loss,
   ``manual_backward`` over length-sorted micro-batches, clipping, and that role's own optimizer step. Roles
   mapped to one adapter (the shared baseline) are updated together.

The update runs no forward pass it does not need (:attr:`SelfPlayModule.old_logprobs_source`): with one epoch the
"old" log-probs equal the gradient pass's own, detached, so they get a pass of their own only where they must be
known before it (REINFORCE++'s batch whitening of a k1 KL reward), or come from the sampler
(``algorithm.old_logprobs: sampler``). Every phase is timed (:mod:`abspo.timing`, ``perf/<phase>_s``).

``trainer.max_steps`` counts optimizer steps, as Lightning does under manual optimization: in
``alternate`` mode each batch makes one step per adapter (two for ABS), in ``phases`` mode one. So
``max_steps: 40`` in alternate mode is 20 batches of games. (With ``accumulate_batches`` k, a role steps
every k batches.)

Several processes (``trainer.strategy: ddp``, or ``abspo.strategies.FSDP2Strategy`` for a sharded base): each
process plays its share of the batch's seeds, every turn is sampled with a key of (run seed, batch, game, role)
so a game does not depend on the process that plays it, and batch statistics and gradients are sums over the
processes, so N processes compute what one does (:mod:`abspo.distributed`, :mod:`abspo.sharding`).

Checkpoints hold the adapters, optimizer and scheduler states and loop state, never the frozen base: the
base is re-loaded from ``model.base`` on resume, and the checkpoint records which base and adapter shapes
it belongs to so a mismatched resume fails with a clear message.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass

import lightning as L
import torch

from abspo import algorithms as alg
from abspo.bank import ROLES, AdapterBank, Anchor, BankSpec, check_anchor
from abspo.config import (AlgorithmConfig, GuardConfig, LoggingConfig, OptimizerConfig, ScheduleConfig,
                          default_optimizers)
from abspo.data import Seed, SeedBatch
from abspo.errors import ConfigError
from abspo.full_policy import FullPolicy
from abspo.modes import Mode, resolve_mode, shared_init_from
from abspo.degenerate import degenerate_reply
from abspo.distributed import Collective
from abspo.game import (Exchange, GameConfig, attacker_forfeits, attacker_prompt, defender_prompt,
                        read_attacker_turn, read_defender_turn)
from abspo.judges.base import Judge
from abspo.models import BaseModel, empty_base, load_base, meta_model, weight_folder
from abspo.micro_batches import micro_batches
from abspo.precision import float32_compute
from abspo.rewards import DEFAULT_TABLE, resolve_table, score_exchanges
from abspo.rollout import Generation, build_scoring_batch, completion_logprobs, generate
from abspo.sharding import full_tensor, gathered, load_shards, shard_bank
from abspo.step_logging import log_batch_metrics
from abspo.timing import PhaseClock
from abspo.vllm_rollouts import RolloutConfig, VLLMRollouts, engine_class, vllm_max_lora_rank

log = logging.getLogger(__name__)

BUILTIN_RANDOM = {"tiny-qwen2"}
"""Built-in bases initialised at random (no weight files): an engine gets the name, and builds the same weights."""

CHECKPOINT_FORMAT = 1


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


class SelfPlayModule(L.LightningModule):
    """Anchored Bipolicy Self-Play: attacker and defender LoRA adapters on one frozen base."""

    def __init__(
        self,
        base: BaseModel | None = None,
        bank: BankSpec | None = None,
        optimizers: dict[str, OptimizerConfig] | None = None,
        game: GameConfig | None = None,
        judge: Judge | None = None,
        reward_table: str | dict[str, dict[str, float]] = DEFAULT_TABLE,
        algorithm: AlgorithmConfig | None = None,
        schedule: ScheduleConfig | None = None,
        logging: LoggingConfig | None = None,
        meta_device: bool = False,
        mode: Mode = "bipolicy",
        guards: GuardConfig | None = None,
        rollout: RolloutConfig | None = None,
        anchor: Anchor = "base",
    ):
        """
        Args:
            base: The frozen base model.
            bank: LoRA adapters and the role -> adapter mapping.
            optimizers: Adapter name -> optimizer. With the default bank, adapters are named after roles.
            game: Templates, revision share, generation lengths.
            judge: Labels each exchange (class path + init_args). Default: abspo.judges.HeuristicJudge().
            reward_table: general_sum_guarded (Self-RedTeam's general sum, the defender not paid for noise),
                general_sum (Self-RedTeam's, as published), zero_sum, or a custom role -> {outcome: weight} table.
            algorithm: Advantage estimator, KL anchor, loss, accumulation and clipping.
            schedule: Which role updates on which batch (alternate or phases).
            logging: Sample tables.
            meta_device: Build the base on the meta device with no weights (parameter accounting and config
                checks of paper-scale models on small machines; cannot train).
            mode: Who holds each role's trainable weights: bipolicy (ABS: a LoRA adapter per role), shared_lora
                (one adapter plays both roles) or shared_full (one fully trained policy, anchored to a frozen
                copy of the base). A config written for bipolicy runs in the shared modes as it is (abspo.modes).
            guards: When a run that can no longer learn stops (non-finite updates, a judge that labels nothing).
            rollout: Which engine samples the turns: Hugging Face generate (default) or vLLM (abspo.vllm_rollouts).
            anchor: What each role's KL is taken against. base (the paper's): the frozen base, adapters off.
                initial: the role's own starting adapter (model.bank.adapters.<name>.init_from), held frozen in the
                bank; a role that starts from zero is anchored to the base either way. With a warm-started role,
                base pulls it back toward the base, away from what it was started with.
        """
        super().__init__()
        self.automatic_optimization = False
        self.base_cfg = base or BaseModel()
        self.mode = mode
        check_anchor(anchor)  # before the base loads
        self.anchor = anchor
        self.bank_spec, self.optim_cfg = resolve_mode(mode, bank or BankSpec(),
                                                      optimizers if optimizers is not None else default_optimizers())
        self.game = game or GameConfig()
        self.algorithm = algorithm or AlgorithmConfig()
        self.schedule = schedule or ScheduleConfig()
        self.logging_cfg = logging or LoggingConfig()
        self.guards = guards or GuardConfig()
        self.guards.validate()
        self.rollout_cfg = rollout or RolloutConfig()
        self.rollout_cfg.hf.validate()
        self._engine: VLLMRollouts | None = None  # built at the first vLLM rollout
        self.reward_table = resolve_table(reward_table)
        self.algorithm.validate()
        self.schedule.validate()
        self.bank_spec.validate()
        for adapter in self.optim_cfg:
            if adapter not in self.bank_spec.adapters and mode != "shared_full":
                raise ConfigError(f"model.optimizers.{adapter}", f"no adapter named {adapter!r}",
                                  f"optimizers are keyed by adapter name: {sorted(self.bank_spec.adapters)}")
            self.optim_cfg[adapter].validate(f"model.optimizers.{adapter}")
        for adapter in self.bank_spec.adapters if mode != "shared_full" else ():
            if adapter not in self.optim_cfg:
                raise ConfigError("model.optimizers", f"adapter {adapter!r} has no optimizer",
                                  f"add `{adapter}: {{lr: 1e-4}}` under model.optimizers")
        if self.rollout_cfg.backend == "vllm":
            if self.algorithm.old_logprobs == "sampler":
                raise ConfigError("model.algorithm.old_logprobs", "the vLLM backend's sampling log-probs come from "
                                  "other kernels than the trainer's forward", "use old_logprobs: recompute")
            engine_class(self.rollout_cfg.vllm)  # not installed: say so now, not at the first rollout
            vllm_max_lora_rank(max(spec.r for spec in self.bank_spec.adapters.values()))
            if mode == "shared_full":
                raise ConfigError("model.rollout.backend", "the vLLM backend serves LoRA adapters on a frozen base; "
                                  "shared_full trains the whole model, which would need a full-weight sync every "
                                  "step", "use model.rollout.backend: hf with shared_full")
        if self.algorithm.old_logprobs == "sampler" and self.rollout_cfg.hf.compile:
            raise ConfigError("model.algorithm.old_logprobs", "compiled decoding's kernels round differently from the "
                              "scoring forward, so its sampling log-probs are not the update's old log-probs",
                              "use old_logprobs: recompute, or model.rollout.hf.compile: false")
        if self.algorithm.old_logprobs == "sampler" and self.base_cfg.dtype != "float32":
            raise ConfigError("model.algorithm.old_logprobs", f"sampler log-probs with a {self.base_cfg.dtype} base "
                              "differ from a recompute by ~0.04 per token (measured on SmolLM2), more than the KL "
                              "they feed", "use old_logprobs: recompute, or model.base.dtype: float32")
        if not self.game.temperature > 0:
            raise ConfigError("model.game.temperature", f"training samples with a positive temperature, got "
                              f"{self.game.temperature}", "use e.g. 1.0 or 0.7 (the update scores at the same temperature)")
        if self.game.top_p != 1.0:
            raise ConfigError("model.game.top_p", f"top_p={self.game.top_p}: the update scores the full "
                              "distribution, so truncated sampling would make the 'on-policy' ratio wrong",
                              "set top_p: 1.0 and lower model.game.temperature for less noisy text")
        if self.schedule.mode == "phases" and self.schedule.phase_steps % self.algorithm.accumulate_batches:
            raise ConfigError("model.schedule.phase_steps", f"phase_steps={self.schedule.phase_steps} is not a multiple "
                              f"of model.algorithm.accumulate_batches={self.algorithm.accumulate_batches}: a role's "
                              "half-accumulated gradient would wait through the opponent's phase and step stale",
                              "make phase_steps a multiple of accumulate_batches")
        for template, key in ((self.game.attacker_harmful_template, "attacker_harmful_template"),
                              (self.game.attacker_benign_template, "attacker_benign_template")):
            if "{seed}" not in template:
                raise ConfigError(f"model.game.{key}", "the template has no {seed} placeholder",
                                  "put {seed} where the seed request should appear")
        if meta_device:
            base_model, self.tokenizer = meta_model(self.base_cfg.name_or_path), None
        elif self.base_cfg.init_on_meta:
            base_model, self.tokenizer = empty_base(self.base_cfg)  # FSDP2 loads the shards (configure_model)
        else:
            base_model, self.tokenizer = load_base(self.base_cfg)
        if self.tokenizer is not None and not getattr(self.tokenizer, "chat_template", None) \
                and not self.game.plain_chat_fallback:
            raise ConfigError("model.base.name_or_path", f"the tokenizer of {self.base_cfg.name_or_path!r} has no chat "
                              "template, and every turn of the game is a chat turn", "use an instruct/chat model, or "
                              "set model.game.plain_chat_fallback: true for 'User: ...\\nAssistant: ' turns")
        if mode == "shared_full":
            self.bank = FullPolicy(base_model, self.tokenizer, init_from=shared_init_from(mode, self.bank_spec),
                                   anchor=anchor)
        else:
            self.bank = AdapterBank(base_model, self.bank_spec, anchor=anchor)
        if self.algorithm.activation_checkpointing:
            self.bank.enable_activation_checkpointing()
        self.adapters = list(self.optim_cfg)  # adapter names (``shared`` for the full policy), one optimizer each
        self._judge = judge
        self.strict_loading = False  # checkpoints hold adapters only; on_load_checkpoint checks they are all there
        self._updates = defaultdict(int)  # adapter -> batches it has been updated on (accumulation counter)
        self._standalone_optimizers = None  # optimizers of learn() outside a Trainer
        self._generated_tokens = 0  # tokens sampled in the current step (for perf/gen_tokens_per_s)
        self.last_rollouts: dict[str, RolloutBatch] = {}  # adapter -> the rollout batch of its latest update
        self._pending_grads: dict[str, torch.Tensor] = {}  # from a checkpoint saved mid-accumulation
        self._sharded = False  # FSDP2 applied (configure_model): every process must run the same forwards
        self.clock = PhaseClock()  # seconds per phase of the current step (perf/<phase>_s)
        self._nonfinite_streak = defaultdict(int)  # adapter -> updates skipped in a row for a non-finite loss/grad
        self._judged = []  # (exchanges sent to the judge, of which unlabelled) of the latest batches
        self.stop_reason: str | None = None  # set by a guard; the trainer stops after the batch
        self._truncated = 0  # prompts cut to fit the context in the current step

    # -- setup ------------------------------------------------------------------------------------
    @property
    def judge(self) -> Judge:
        if self._judge is None:
            from abspo.judges import HeuristicJudge

            self._judge = HeuristicJudge()
        return self._judge

    def setup(self, stage: str) -> None:
        self.check_trainer(self.trainer)

    def check_trainer(self, trainer) -> None:
        """Refuse a strategy, process count or precision the self-play loop cannot run under. ``abspo fit`` calls
        this before anything is written (Lightning's ``setup`` comes after the run's config.yaml and logger folder);
        ``setup`` calls it again for runs driven from Python."""
        from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

        from abspo.strategies import FSDP2Strategy

        strategy = trainer.strategy
        if isinstance(strategy, ModelParallelStrategy) and not isinstance(strategy, FSDP2Strategy):
            raise ConfigError("trainer.strategy", "ModelParallelStrategy would save and load the frozen base in every "
                              "checkpoint (and cannot resume an adapter-only one)",
                              "use class_path: abspo.strategies.FSDP2Strategy (the same strategy, adapter-only checkpoints)")
        if trainer.world_size > 1 and not isinstance(strategy, (DDPStrategy, FSDP2Strategy)):
            raise ConfigError("trainer.strategy", f"{type(strategy).__name__} on {trainer.world_size} processes is "
                              "not supported by abspo's self-play loop (role forwards bypass a strategy's wrapper; "
                              "abspo synchronises the adapters itself under DDP and shards them under FSDP2)",
                              "use trainer.strategy: ddp, or abspo.strategies.FSDP2Strategy (docs/strategies.md)")
        if self.base_cfg.init_on_meta and not isinstance(strategy, FSDP2Strategy):
            raise ConfigError("model.base.init_on_meta", "only FSDP2 loads a base built on the meta device (each "
                              "process its own shards)", "set init_on_meta: false, or use abspo.strategies.FSDP2Strategy")
        if self.rollout_cfg.backend == "vllm" and trainer.world_size > 1:
            raise ConfigError("model.rollout.backend", "the vLLM backend runs in one process (one engine beside the "
                              f"trainer), this run has {trainer.world_size}", "use model.rollout.backend: hf "
                              "with several processes")
        if isinstance(strategy, FSDP2Strategy) and not strategy._save_distributed_checkpoint:
            # ModelParallelStrategy would write rank 0's shards alone into one file: half of every adapter
            raise ConfigError("trainer.strategy.init_args.save_distributed_checkpoint", "FSDP2Strategy writes "
                              "adapter-only sharded checkpoints (a folder: each process its shards) and resumes from "
                              "those only", "leave it true (the default); `abspo test` reads such a folder whole")
        if isinstance(strategy, FSDP2Strategy) and self.rollout_cfg.hf.cache != "dynamic":
            raise ConfigError("model.rollout.hf.cache", "a static cache (and compiled decoding) under FSDP2 is untested "
                              "with its lockstep generation (synced_gpus), where a hang would stall every process",
                              "use model.rollout.hf.cache: dynamic under FSDP2 (ddp allows static and compile: each process generates on its own)")
        if isinstance(strategy, FSDP2Strategy) and self.algorithm.kl_precision == "float32":
            raise ConfigError("model.algorithm.kl_precision", "float32 KL passes under FSDP2 are not supported yet "
                              "(FSDP2 gathers a layer's weights inside the pass, which float32 arithmetic must not see)",
                              "use kl_precision: model under FSDP2, or trainer.strategy: ddp")
        if isinstance(strategy, FSDP2Strategy) and self.mode == "shared_full":
            raise ConfigError("model.mode", "shared_full is not supported under FSDP2 (the trained policy and its "
                              "frozen reference copy are not sharded)",
                              "use trainer.strategy: ddp, or model.mode: bipolicy / shared_lora under FSDP2")

        precision = str(trainer.precision)
        if self.algorithm.old_logprobs == "sampler" and not precision.startswith(("32", "64")):
            raise ConfigError("model.algorithm.old_logprobs", f"sampler log-probs under trainer.precision {precision} "
                              "differ from a recompute by rounding, more than the KL they feed",
                              "use old_logprobs: recompute, or trainer.precision: 32-true")

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: shard the base and the adapters with FSDP2 (:mod:`abspo.sharding`)."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if self._sharded or self._trainer is None or not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        shard_bank(self.bank, self.trainer.world_size, self.trainer.strategy.root_device.type)
        if self.base_cfg.init_on_meta:
            load_shards(self.bank, weight_folder(self.base_cfg))
        self._sharded = True

    @property
    def collective(self) -> Collective:
        """The processes this module trains with (one, or the DDP process group): see :mod:`abspo.distributed`."""
        return Collective.current()

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # seeds are text; tensors are built on the right device during the step

    def configure_optimizers(self):
        optimizers, schedulers = [], []
        for adapter in self.adapters:
            opt, sched = self.optim_cfg[adapter].build(self.bank.adapter_parameters(adapter), f"model.optimizers.{adapter}")
            optimizers.append(opt)
            schedulers.append(sched)
        return optimizers, schedulers

    @property
    def old_logprobs_source(self) -> str:
        """Where the update's "old" log-probs (under the role that sampled the turns) come from: ``recompute`` (a
        no-gradient forward of the role), ``sampler`` (recorded while sampling), or ``gradient_pass`` (the
        gradient pass's own log-probs, detached: with one epoch they are the same numbers, and nothing needs them
        earlier unless REINFORCE++ whitens a k1 KL reward over the batch before the first backward)."""
        cfg = self.algorithm
        # float32 KL passes: the role's own pass must be one of them, not the gradient pass in the model's dtype
        needed_first = cfg.update_epochs > 1 or cfg.kl_mode == "reward_k1" and (
            cfg.estimator == "reinforce_pp" and cfg.kl_coef != 0 or cfg.kl_precision == "float32")
        return cfg.old_logprobs if needed_first else "gradient_pass"

    @property
    def optimizer_steps_per_batch(self) -> float:
        """How many optimizer steps (``trainer.global_step`` increments) one batch of games makes on average."""
        per_batch = [len({self.bank.adapter_for(r) for r in self.schedule.roles_to_update(i)}) for i in (0, self.schedule.phase_steps)]
        return sum(per_batch) / len(per_batch) * self.algorithm.update_epochs / self.algorithm.accumulate_batches

    def trainable_parameter_count(self) -> dict[str, int]:
        counts = {a: sum(p.numel() for p in self.bank.adapter_parameters(a)) for a in self.adapters}
        counts["base"] = sum(p.numel() for _, p in self.bank.base_parameters())
        return counts

    # -- the game ---------------------------------------------------------------------------------
    def plan(self, seeds: list[Seed]) -> list[Exchange]:
        """The batch's games before they are played: ``group_size`` per seed (GRPO), each seed revised or not
        (``unrevised_fraction``), numbered in batch order. Decided for the whole batch, so a data-parallel run
        plays exactly the games of a single process."""
        k = self.algorithm.group_size
        unrevised = unrevised_seeds(seeds, self.game.unrevised_fraction)
        # A seed's GRPO group shares one fate (revised or not) so that its games are comparable.
        exchanges = [Exchange(seed=s.prompt, seed_harmful=s.harmful, revised=i not in unrevised, group=i)
                     for i, s in enumerate(seeds) for _ in range(k)]
        for n, e in enumerate(exchanges):
            e.game = n
        return exchanges

    def play(self, seeds: list[Seed], batch_index: int = 0) -> list[Exchange]:
        """Play one game per seed (``group_size`` games per seed for GRPO). Returns the filled exchanges."""
        return self.play_games(self.plan(seeds), batch_index)

    def play_games(self, exchanges: list[Exchange], batch_index: int = 0) -> list[Exchange]:
        """Play the planned ``exchanges`` of batch ``batch_index``: attacker turns, defender turns, the judge's
        verdicts and the rewards. Each turn is sampled with the key of (run seed, batch, game, role)."""
        self.bank.model.eval()
        revised = [e for e in exchanges if e.revised]
        gen = self._generate_turns("attacker", [attacker_prompt(self.tokenizer, self.game, e.seed, e.seed_harmful)
                                                for e in revised], [e.game for e in revised], batch_index)
        for i, (e, p_ids, c_ids, text) in enumerate(zip(revised, gen.prompt_ids, gen.completion_ids, gen.texts)):
            e.attacker_output, parsed = read_attacker_turn(self.game, text)
            e.attacker_well_formed = parsed.well_formed
            e.prompt = parsed.text
            e.forfeited = attacker_forfeits(parsed)
            e.turns["attacker"] = (p_ids, c_ids)
            if gen.sampled_logprobs is not None:
                e.sampled_logprobs["attacker"] = gen.sampled_logprobs[i]
        for e in exchanges:
            if not e.revised:
                e.prompt = e.seed
        played = [e for e in exchanges if not e.forfeited]  # a forfeit hands the defender nothing
        gen = self._generate_turns("defender", [defender_prompt(self.tokenizer, self.game, e.prompt) for e in played],
                                   [e.game for e in played], batch_index)
        for i, (e, p_ids, c_ids, text) in enumerate(zip(played, gen.prompt_ids, gen.completion_ids, gen.texts)):
            e.defender_output = text
            e.response, e.defender_well_formed = read_defender_turn(self.game, text)
            e.turns["defender"] = (p_ids, c_ids)
            if gen.sampled_logprobs is not None:
                e.sampled_logprobs["defender"] = gen.sampled_logprobs[i]
        return self.judge_games(exchanges)

    def judge_games(self, exchanges: list[Exchange]) -> list[Exchange]:
        """The judge's verdict on every game whose defender answered, whether the answer is degenerate, and every
        game's rewards from the reward table."""
        played = [e for e in exchanges if "defender" in e.turns]
        if played:
            with self.clock("judge"):
                verdicts = self.judge.score([e.prompt for e in played], [e.response for e in played],
                                            [e.seed_harmful for e in played])
            for e, v in zip(played, verdicts):
                e.verdict = v
                e.degenerate = degenerate_reply(e.response, v.off_topic)
        score_exchanges(exchanges, self.reward_table)
        return exchanges

    def _generate_turns(self, role: str, prompts: list[str], games: list[int], batch_index: int):
        """Sample ``role``'s turns for ``prompts`` (of games ``games``), each with its game's key. Sharded, every
        process generates in lockstep (``synced_gpus``), one with no turn of this role on a throw-away prompt."""
        new_tokens = self.game.max_new_tokens_attacker if role == "attacker" else self.game.max_new_tokens_defender
        keys = [sampling_key(batch_index, g, role) for g in games]
        if not prompts and not self._sharded:
            return Generation([], [], [])
        prompts = self._fit_to_context(prompts, new_tokens, role)
        if self.rollout_cfg.backend == "vllm":
            with self.clock(f"rollout/{role}"):
                gen = self.vllm_engine().generate(self.bank.adapter_for(role), prompts, self.tokenizer, new_tokens,
                                                  self.game.temperature, keys)
            self._generated_tokens += sum(len(c) for c in gen.completion_ids)
            return gen
        with self.clock(f"rollout/{role}"), self.bank.role(role) as model, gathered(self.bank), self._no_grad():
            gen = generate(model, self.tokenizer, prompts or ["."], new_tokens, self.game.temperature,
                           self.game.top_p, synced_gpus=self._sharded, keys=keys or [0],
                           return_logprobs=self.old_logprobs_source == "sampler", decoding=self.rollout_cfg.hf)
        if not prompts:
            return Generation([], [], [])
        self._generated_tokens += sum(len(c) for c in gen.completion_ids)
        return gen

    def _fit_to_context(self, prompts: list[str], new_tokens: int, role: str) -> list[str]:
        """Prompts that leave room for ``new_tokens`` in the model's context: longer ones lose tokens from their
        middle (``game.overlong_prompts: truncate``, counted in ``game/truncated_prompts``) or stop the run."""
        config = getattr(self.bank.model, "config", None)
        context = getattr(config, "max_position_embeddings", None)
        if not context or self.tokenizer is None:
            return prompts
        room = context - new_tokens
        out, cut = [], 0
        for prompt in prompts:
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) <= room:
                out.append(prompt)
                continue
            if self.game.overlong_prompts == "error" or room < 2:
                raise ConfigError("model.game.overlong_prompts", f"a {role} prompt of {len(ids)} tokens leaves no room "
                                  f"for {new_tokens} new tokens in the model's context of {context} (it starts "
                                  f"{prompt[:80]!r})", "shorten the seeds, lower max_new_tokens, or set "
                                  "overlong_prompts: truncate")
            out.append(self.tokenizer.decode(ids[:room // 2] + ids[len(ids) - (room - room // 2):]))
            cut += 1
        if cut:
            self._truncated += cut
            log.warning("%d %s prompts were cut to fit the context of %d tokens (model.game.overlong_prompts)",
                        cut, role, context)
        return out

    def vllm_engine(self) -> VLLMRollouts:
        """The vLLM engine of ``rollout.backend: vllm``, built at first use (after a resume has loaded the
        adapters), holding the frozen base once and both role adapters as LoRA requests."""
        if self._engine is None:
            cfg = self.base_cfg
            first_role = {a: r for r, a in reversed(list(self.bank_spec.roles.items()))}
            self._engine = VLLMRollouts(
                self.rollout_cfg.vllm, cfg.name_or_path if cfg.name_or_path in BUILTIN_RANDOM else weight_folder(cfg),
                cfg.dtype, max(spec.r for spec in self.bank_spec.adapters.values()), list(self.bank_spec.adapters),
                export=lambda adapter, folder: self.bank.export(first_role[adapter], folder))
        return self._engine

    def _micro_batches(self, chunks: int) -> int:
        """Micro-batches to run when this process has ``chunks``: sharded, the most any process has (FSDP2
        forwards are collectives, so every process runs as many; the extra ones are throw-away work)."""
        return int(self.collective.max(torch.tensor(chunks))) if self._sharded else chunks

    def _micro_batch_rows(self, prompts: list[list[int]], completions: list[list[int]],
                          roles: list[str] | None = None) -> list[list[int]]:
        """The row indices of each micro-batch (:func:`abspo.micro_batches.micro_batches`: by length, one role
        each, at most ``micro_batch_size`` rows and ``micro_batch_tokens`` padded tokens, largest first; on
        SmolLM2's first batch, a shared adapter's largest micro-batch had 1,624 padded tokens with the roles mixed,
        1,085 apart). Sharded, empty lists follow up to the count every process runs."""
        cfg = self.algorithm
        chunks = micro_batches([len(p) for p in prompts], [len(c) for c in completions], roles,
                               cfg.micro_batch_size, cfg.micro_batch_tokens)
        return chunks + [[] for _ in range(self._micro_batches(len(chunks)) - len(chunks))]

    def _no_grad(self):
        """``inference_mode`` for passes whose outputs never enter a gradient (cheaper than ``no_grad``); plain
        ``no_grad`` when sharded, where FSDP2's gathered parameters must stay ordinary tensors."""
        return torch.no_grad() if self._sharded else torch.inference_mode()

    def _dummy_scoring_batch(self):
        return build_scoring_batch([[self._pad_id()]], [[self._pad_id()]], self._pad_id(), self.device)

    # -- the update -------------------------------------------------------------------------------
    def training_step(self, batch: SeedBatch, batch_idx: int):
        start = time.perf_counter()
        self._generated_tokens = 0
        self._truncated = 0
        collective = self.collective
        # Every process plans the whole batch and plays its share of the seeds (a seed's GRPO group stays on one
        # process); turns are sampled with keys of (run seed, batch, game, role), so a game is the same on any
        # process and a resumed run replays exactly the games of an uninterrupted one. The torch RNG is forked
        # and seeded per batch for anything else that draws (e.g. a judge that samples).
        planned = self.plan(batch.seeds)
        share = range(len(batch.seeds))[collective.shard(len(batch.seeds))]
        mine = [e for e in planned if e.group in share]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sampling_key(batch.index, -1, "torch"))
            self.play_games(mine, batch.index)
        gen_time = time.perf_counter() - start
        # every game of the batch, in batch order, on every process
        exchanges = sorted(collective.gather_objects(mine), key=lambda e: e.game)
        metrics = game_metrics(exchanges)
        metrics.update(self.learn(mine, batch.index))
        self._guard_unlabelled(exchanges)
        for role in ROLES:
            rewards = [e.rewards[role] for e in exchanges if role in e.rewards]
            if rewards:
                metrics[f"{role}/reward"] = sum(rewards) / len(rewards)
        counters = [c for c in ("unparsed", "failed", "requests")  # running totals kept by model-based judges
                    if isinstance(getattr(self.judge, c, None), int)]
        metrics["game/truncated_prompts"] = float(collective.sum(torch.tensor(self._truncated)))
        totals = collective.sum(torch.tensor([getattr(self.judge, c) for c in counters] + [self._generated_tokens]))
        for counter, total in zip(counters, totals.tolist()):
            metrics[f"judge/{counter}"] = total
        elapsed = time.perf_counter() - start
        metrics["perf/gen_tokens_per_s"] = totals[-1].item() / max(gen_time, 1e-9)
        metrics["perf/step_s"] = elapsed
        metrics.update({f"perf/{phase.replace('/', '_')}_s": s for phase, s in self.clock.take().items()})
        log_batch_metrics(self, metrics, step=batch.index)
        for role in ROLES:
            if f"{role}/reward" in metrics:
                self.log(f"r_{role[:3]}", float(metrics[f"{role}/reward"]), prog_bar=True, logger=False,
                         batch_size=len(exchanges))
        self._maybe_log_samples(exchanges, batch.index)
        self._check_replicas(batch.index)
        self.last_exchanges = exchanges
        if self._trainer is not None and hasattr(self.trainer.datamodule, "batches_served"):
            self.trainer.datamodule.batches_served = batch.index + 1

    def _check_replicas(self, index: int) -> None:
        """Every ``logging.check_replicas_every_n_batches`` batches of a data-parallel run, check that every
        process holds the same adapters (a float64 checksum each, compared); a drift is a bug, so stop loudly."""
        every = self.logging_cfg.check_replicas_every_n_batches
        collective = self.collective
        if not collective.active or self._sharded or not every or (index + 1) % every:
            return  # (sharded adapters differ between processes by design)
        if not collective.checksum_agrees(list(self.bank.adapter_state_dict().values())):
            raise RuntimeError(f"batch {index}: the adapters differ between processes; data-parallel training must "
                               "keep them identical (please report this with your config)")

    def learn(self, exchanges: list[Exchange], batch_index: int) -> dict[str, float]:
        """Update every adapter whose roles are due at ``batch_index`` from the scored ``exchanges``, in the
        schedule's role order; returns the update's metrics (``<role>/kl``, ``<roles>/loss``, ...).

        The one entry point of the update, for ``training_step`` and for anything that plays its own games
        (tests, notebooks): outside a Trainer it builds and keeps its own optimizers.
        """
        optimizers = self._optimizers_by_adapter()
        self.last_rollouts = {}
        by_adapter: dict[str, list[str]] = {}
        for role in self.schedule.roles_to_update(batch_index):
            by_adapter.setdefault(self.bank.adapter_for(role), []).append(role)
        metrics: dict[str, float] = {}
        for adapter, roles in by_adapter.items():
            metrics.update(self.update(adapter, roles, exchanges, *optimizers[adapter]))
        return metrics

    def _optimizers_by_adapter(self) -> dict[str, tuple]:
        if self._trainer is not None:
            optimizers, schedulers = self.optimizers(), self.lr_schedulers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        else:
            if self._standalone_optimizers is None:
                self._standalone_optimizers = self.configure_optimizers()
            optimizers, schedulers = self._standalone_optimizers
        return {a: (o, s) for a, o, s in zip(self.adapters, optimizers, schedulers)}

    def update(self, adapter: str, roles: list[str], exchanges: list[Exchange], opt, sched) -> dict[str, float]:
        """One policy-gradient update of ``adapter`` from the games of ``roles``, in three steps: the rollout batch
        with its advantages (:meth:`rollout_batch`), then per pass a gradient pass (:meth:`gradient_pass`) and,
        when due, the optimizer step (:meth:`optimizer_step`). Returns logging stats keyed ``<role>/...`` for
        per-role figures and ``<roles joined by '/'>/...`` for the adapter's."""
        cfg = self.algorithm
        name = "/".join(roles)
        rollout = self.rollout_batch(roles, exchanges)
        if rollout is None:  # no scored turn of these roles on any process (e.g. the judge labelled nothing)
            self._updates[adapter] += 1
            if self._updates[adapter] % cfg.accumulate_batches == 0:  # the step still counts (max_steps = batches)
                for _ in range(cfg.update_epochs):
                    self.optimizer_step(adapter, opt, sched, with_gradient=cfg.accumulate_batches > 1)
            return {f"{name}/skipped": 1.0}
        stats = dict(rollout.stats)
        self.last_rollouts[adapter] = rollout  # what the update trained on (diagnostics read it)
        self._updates[adapter] += 1
        for _ in range(cfg.update_epochs):
            passed = self.gradient_pass(adapter, roles, rollout)
            if self._updates[adapter] % cfg.accumulate_batches == 0:
                passed.update(self.optimizer_step(adapter, opt, sched, finite_loss=math.isfinite(passed["loss"])))
            for key, value in passed.items():  # the last pass's figures (clip_frac is 0 on the first)
                per_role = key.split("/")[0] in roles  # <role>/kl, measured here when no pass before did
                stats[key if per_role else f"{name}/{key}"] = value
        # Every process's turns, as every other figure of the update is (a process holds its share of them).
        stats[f"{name}/samples"] = float(self.collective.sum(torch.tensor(len(rollout.prompts))))
        return stats

    def role_samples(self, role: str, exchanges: list[Exchange]) -> list[tuple]:
        """(prompt ids, completion ids, reward, group, sampler log-probs or None) for every scored turn the role
        played."""
        return [(*e.turns[role], e.rewards[role], e.group, e.sampled_logprobs.get(role))
                for e in exchanges if role in e.rewards and role in e.turns]

    @torch.no_grad()
    def rollout_batch(self, roles: list[str], exchanges: list[Exchange]) -> RolloutBatch | None:
        """Step 1: every scored turn of ``roles``, padded to one width, with its log-probs under the role that
        played it and under the anchor, and its advantages (normalised per role). None when there is none."""
        cfg = self.algorithm
        reduce = self.collective.sum  # batch statistics over every process's share (identity on one process)
        source = self.old_logprobs_source
        prompts, completions, advantages, olds, refs, row_roles = [], [], [], [], [], []
        stats: dict[str, float] = {}
        for role in roles:
            samples = self.role_samples(role, exchanges)
            if not int(reduce(torch.tensor(len(samples)))):
                continue  # no process has a turn of this role
            # A process whose share has none still takes part in every reduction (and, sharded, every forward).
            old, ref, mask = self._reference_logprobs(role, samples, with_role=source == "recompute")
            rewards = torch.tensor([s[2] for s in samples], dtype=torch.float32)
            if source == "sampler":
                old = torch.stack([_pad_to(torch.tensor([s[4]], dtype=torch.float32), ref.shape[1])[0]
                                   for s in samples]) if samples else torch.zeros_like(ref)
            # With the gradient pass as the source, the k1 penalty (GRPO only: it is per sequence) is added there.
            kl = alg.kl_k1(old, ref) if cfg.kl_mode == "reward_k1" and old is not None else torch.zeros_like(ref)
            groups = torch.tensor([s[3] for s in samples], dtype=torch.long)
            adv = alg.advantages(cfg.estimator, rewards, kl, mask, cfg.kl_coef, groups, cfg.normalize_rewards, reduce)
            prompts += [s[0] for s in samples]
            completions += [s[1] for s in samples]
            row_roles += [role] * len(samples)
            advantages.append(adv)
            olds.append(old)
            refs.append(ref)
            if old is not None:  # else the gradient pass measures it
                stats[f"{role}/kl"] = float(alg.masked_mean(alg.kl_k3(old, ref), mask, reduce=reduce))
        if not refs:
            return None
        t = max(x.shape[1] for x in refs)  # one width for every role: a shared adapter mixes them in micro-batches
        cat = lambda xs: torch.cat([_pad_to(x, t) for x in xs])  # noqa: E731
        old = None if source == "gradient_pass" else cat(olds)
        return RolloutBatch(prompts, completions, cat(advantages), old, cat(refs), stats, row_roles)

    def gradient_pass(self, adapter: str, roles: list[str], rollout: RolloutBatch) -> dict[str, float]:
        """Step 2: one pass over the rollout batch in length-sorted micro-batches, ``manual_backward`` of the
        token-mean loss (each micro-batch weighted by its share of the batch's tokens) into the adapter's ``.grad``.

        Without old log-probs in the rollout (``old_logprobs_source == "gradient_pass"``) the pass's own detached
        log-probs stand in for them: the ratio is 1, GRPO's k1 penalty is added to the advantages here (it is per
        sequence, so nothing before needed it), and ``<role>/kl`` is measured here."""
        cfg = self.algorithm
        collective = self.collective
        total_tokens = int(collective.sum(torch.tensor(sum(len(c) for c in rollout.completions))))
        on_policy = cfg.update_epochs == 1  # then the ratio is exactly 1 and old = the live log-probs, detached
        live_old = rollout.old_logp is None
        kl_sums = torch.zeros(2, len(roles), dtype=torch.float64)  # per role: k3 summed over tokens, token count
        loss_sum, clip_sum, entropy_sum = 0.0, 0.0, 0.0
        grad_scale = collective.world_size if self._sharded else 1  # FSDP2 averages over processes (sharding.py)
        with self.clock("update/gradient"), self.bank.role(roles[0]), self.bank.update_mode():
            # (every role in the update routes to `adapter`)
            for rows in self._micro_batch_rows(rollout.prompts, rollout.completions, rollout.roles):
                if not rows:  # sharded, this process is out of rows: a zero-weighted pass
                    logp, _ = completion_logprobs(self.bank.model, self._dummy_scoring_batch(),
                                                  temperature=self.game.temperature)
                    self._backward(logp.sum() * 0.0)
                    continue
                batch = build_scoring_batch([rollout.prompts[i] for i in rows], [rollout.completions[i] for i in rows],
                                            self._pad_id(), self.device)
                t = batch.completion_ids.shape[1]
                index = torch.tensor(rows)
                adv, ref = (x[index, :t].to(self.device) for x in (rollout.advantages, rollout.ref_logp))
                logp, entropy = completion_logprobs(self.bank.model, batch, with_entropy=True,
                                                    temperature=self.game.temperature)
                mask = batch.completion_mask
                old = logp.detach() if live_old else rollout.old_logp[index, :t].to(self.device)
                if live_old:
                    if cfg.kl_mode == "reward_k1":
                        adv = adv + alg.kl_penalty_to_go(alg.kl_k1(old, ref), mask, cfg.kl_coef)
                    k3 = (alg.kl_k3(old, ref) * mask).sum(-1).double().cpu()
                    for r, role in enumerate(roles):
                        mine = torch.tensor([rollout.roles[i] == role for i in rows])
                        kl_sums[:, r] += torch.stack([k3[mine].sum(), mask.sum(-1).cpu()[mine].sum().double()])
                loss, clip_frac = alg.objective(logp, logp.detach() if on_policy else old, ref, adv, mask,
                                                None if on_policy else cfg.clip_eps, cfg.kl_coef,
                                                kl_in_loss=cfg.kl_mode == "loss_k3")
                weight = mask.sum().item() / total_tokens
                self._backward(loss * (weight * grad_scale / cfg.accumulate_batches))
                loss_sum += loss.item() * weight
                clip_sum += clip_frac.item() * weight
                entropy_sum += alg.masked_mean(entropy, mask).item() * weight
        loss_sum, entropy_sum, clip_sum = collective.sum(torch.tensor([loss_sum, entropy_sum, clip_sum])).tolist()
        out = {"loss": loss_sum, "entropy": entropy_sum, "clip_frac": clip_sum}
        if live_old:
            kl_sums = collective.sum(kl_sums)
            for r, role in enumerate(roles):
                if kl_sums[1, r] > 0:
                    out[f"{role}/kl"] = float(kl_sums[0, r] / kl_sums[1, r])
        return out

    def optimizer_step(self, adapter: str, opt, sched, finite_loss: bool = True,
                       with_gradient: bool = True) -> dict[str, float]:
        """Step 3: sum the adapter's gradient over processes (data parallel), clip it, step its optimizer and
        scheduler, clear its gradient.

        A non-finite loss or gradient skips the step: the gradients are dropped before ``opt.step()``, which then
        leaves every parameter and optimizer state untouched (optimizers skip parameters without a gradient) and
        still counts as the step it was (the schedule, ``max_steps`` and resumes stay aligned). The same decision
        on every process: the norm is of the summed (or sharded) gradient. ``with_gradient=False`` (a batch with
        nothing to learn from) makes the same no-op step, so that every batch makes its optimizer steps."""
        cfg = self.algorithm
        params = self.bank.adapter_parameters(adapter)
        if not with_gradient:
            for p in params:
                p.grad = None
        elif not self._sharded:  # FSDP2 has reduce-scattered the sums already
            self.collective.sum_grads_(params)
        grads = [p.grad for p in params if p.grad is not None]
        grad_norm = float(full_tensor(torch.nn.utils.get_total_norm(grads))) if grads else 0.0
        finite = finite_loss and math.isfinite(grad_norm)
        if with_gradient and not finite:
            for p in params:
                p.grad = None
            self._nonfinite_streak[adapter] += 1
            if self._nonfinite_streak[adapter] >= self.guards.max_consecutive_nonfinite:
                self._stop(f"{self._nonfinite_streak[adapter]} consecutive updates of adapter {adapter!r} had a "
                           "non-finite loss or gradient (each was skipped: its weights are those from before the "
                           "first). Lower its learning rate or model.algorithm.max_grad_norm, check the judge's "
                           "rewards for NaN, then resume with --ckpt_path last")
        elif with_gradient:
            self._nonfinite_streak[adapter] = 0
            if cfg.max_grad_norm is not None:
                if self._trainer is None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                else:
                    self.clip_gradients(opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
        lr = sched.get_last_lr()[0]
        with self.clock("update/optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        if finite and grads and self._engine is not None:
            self._engine.mark_stale(adapter)  # the engine pushes the new version before its next rollout
        return {"grad_norm": grad_norm, "lr": lr, "skipped_nonfinite": float(not finite)}

    def _stop(self, reason: str) -> None:
        """A guard's verdict: stop after this batch (its checkpoint is written as at any end of training)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._trainer is not None:
            self.trainer.should_stop = True

    def _guard_unlabelled(self, exchanges: list[Exchange]) -> None:
        """Stop when the judge left more than ``guards.max_unlabelled_share`` of the exchanges it was sent over the
        last ``guards.unlabelled_window`` batches unlabelled (``exchanges``: the whole batch, every process's)."""
        self._judged = (self._judged + [judge_counts(exchanges)])[-self.guards.unlabelled_window:]
        sent, unlabelled = map(sum, zip(*self._judged))
        share = unlabelled / max(1, sent)
        if len(self._judged) == self.guards.unlabelled_window and share > self.guards.max_unlabelled_share:
            self._stop(f"the judge left {unlabelled} of the {sent} exchanges of the last {len(self._judged)} "
                       f"batches unlabelled ({share:.0%} > model.guards.max_unlabelled_share "
                       f"{self.guards.max_unlabelled_share:.0%}): nothing is being learnt. Check the judge (a "
                       "RemoteJudge's server and its log lines), then resume with --ckpt_path last")

    def _backward(self, loss: torch.Tensor) -> None:
        # Through the trainer when there is one (precision plugins, strategies); plain autograd otherwise, so the
        # step also runs outside a Trainer (benchmarks, notebooks).
        # Under DDP the strategy's reducer is kept out (it would all-reduce every micro-batch and expect every
        # adapter in every backward): optimizer_step sums each adapter's gradient once, itself.
        if self._trainer is None:
            loss.backward()
            return
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        with block() if block is not None and self.collective.active else contextlib.nullcontext():
            self.manual_backward(loss)

    @torch.no_grad()
    def _reference_logprobs(self, role: str, samples, with_role: bool = True):
        """Log-probs [N, T] of the sampled completions under the anchor and (``with_role``) under the role before
        its update, at the sampling temperature, with the completion mask: (old or None, ref, mask). With
        ``kl_precision: float32`` both passes compute in float32 (:mod:`abspo.precision`), so that their difference,
        the KL, is not mostly the rounding of two 16-bit forwards."""
        n, t = len(samples), max([1] + [len(s[1]) for s in samples])
        old, ref, mask = (torch.zeros(n, t) for _ in range(3))
        device_type = self.device.type
        precise = ((lambda: float32_compute(device_type)) if self.algorithm.kl_precision == "float32"
                   else contextlib.nullcontext)
        for rows in self._micro_batch_rows([s[0] for s in samples], [s[1] for s in samples]):
            chunk = [samples[i] for i in rows]
            batch = (build_scoring_batch([s[0] for s in chunk], [s[1] for s in chunk], self._pad_id(), self.device)
                     if chunk else self._dummy_scoring_batch())
            scored = {}
            if with_role:
                with self.clock("score/old"), self.bank.role(role) as model, precise():
                    scored["old"] = self._score(model, batch)
            with self.clock("score/anchor"), self.bank.anchor(role) as model, precise():
                scored["ref"] = self._score(model, batch)
            if chunk:
                index, width = torch.tensor(rows), batch.completion_ids.shape[1]
                ref[index, :width] = scored["ref"].cpu()
                mask[index, :width] = batch.completion_mask.cpu().float()
                if with_role:
                    old[index, :width] = scored["old"].cpu()
        return (old if with_role else None), ref, mask

    def _score(self, model, batch) -> torch.Tensor:
        """Completion log-probs of ``batch`` under ``model``, with no gradient, as an ordinary tensor."""
        with self._no_grad():
            logp, _ = completion_logprobs(model, batch, temperature=self.game.temperature)
        return logp.clone() if logp.is_inference() else logp

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer is not None else 0

    # -- logging ----------------------------------------------------------------------------------
    def _maybe_log_samples(self, exchanges: list[Exchange], index: int) -> None:
        every = self.logging_cfg.samples_every_n_steps
        logger = self.logger
        if not every or index % every or logger is None or not hasattr(logger.experiment, "add_text"):
            return
        logger.experiment.add_text("games", samples_markdown(exchanges[: self.logging_cfg.samples_per_table]),
                                   global_step=index)  # the batch index, the x-axis of every scalar

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_signature(self) -> dict:
        bank = self.bank_spec.signature() if self.mode != "shared_full" else {}
        optimizers = {a: cfg.state_settings() for a, cfg in self.optim_cfg.items()}
        signature = {"format": CHECKPOINT_FORMAT, "base": self.base_cfg.name_or_path, "mode": self.mode, "bank": bank,
                     "optimizers": optimizers}
        # Only where they differ from a run without them, so that earlier checkpoints still resume.
        if self.anchor != "base":
            signature["anchor"] = self.anchor
        if self.bank.initial_sources:  # the starting adapters' weights: a resume must start from the same ones
            signature["initial"] = {a: src["sha256"] for a, src in self.bank.initial_sources.items()}
        return signature

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        adapter_keys = {k for k in checkpoint["state_dict"] if self.bank.owner_of(k) is not None}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in adapter_keys}
        checkpoint["abspo"] = self.checkpoint_signature()
        # Accumulation state: how many batches each adapter has been updated on, and the gradients summed since
        # its last step (LoRA-sized), so that a resume mid-accumulation steps on the same sum.
        # Data parallel: the pending gradients are each process's own partial sums, so the checkpoint holds their
        # sum (rank 0 writes it) and on resume rank 0 alone restores it: exact on any number of processes.
        # Sharded (FSDP2): they are already the reduce-scattered sums, one shard per process (DTensors), which
        # FSDP2Strategy writes into its torch.distributed.checkpoint folder beside the adapter shards and loads
        # back resharded, so every process restores its own shard.
        pending = [(n, p) for n, p in self.named_parameters() if self.bank.owner_of(n) is not None
                   and self._updates[self.bank.owner_of(n)] % self.algorithm.accumulate_batches]
        if self._sharded:
            grads = {n: p.grad for n, p in pending if p.grad is not None}
        elif self.collective.active:
            summed = self.collective.sum_present([p.grad for _, p in pending], [p for _, p in pending])
            grads = {n: g.to("cpu") for (n, _), g in zip(pending, summed) if g is not None}
        else:
            grads = {n: p.grad.detach().to("cpu", copy=True) for n, p in pending if p.grad is not None}
        checkpoint["abspo_accumulation"] = {"updates": dict(self._updates), "grads": grads}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.check_checkpoint(checkpoint)
        saved = checkpoint.get("abspo_accumulation")
        if saved is not None:
            self._updates = defaultdict(int, saved["updates"])
            every_process = saved.get("sharded", False)  # each process holds its own shard of the sums
            self._pending_grads = saved["grads"] if every_process or self.collective.rank == 0 else {}
            self._set_pending_grads()

    def on_train_start(self) -> None:
        # The Trainer zeroes every gradient after loading the checkpoint (``Trainer._run_stage``): set them again.
        self._set_pending_grads()
        self._pending_grads = {}

    def _set_pending_grads(self) -> None:
        """The gradients summed before a checkpoint saved mid-accumulation, as the adapters' ``.grad``."""
        params = dict(self.named_parameters())
        for name, grad in self._pending_grads.items():
            params[name].grad = grad.to(params[name].device, params[name].dtype)

    def check_checkpoint(self, checkpoint: dict, key: str = "--ckpt_path") -> None:
        """Raise a ConfigError unless ``checkpoint`` was written by a run with this base and these adapters."""
        saved = checkpoint.get("abspo")
        if saved is None:
            raise ConfigError(key, "the checkpoint was not written by abspo (it has no 'abspo' section)",
                              "resume from a checkpoint of an abspo run")
        mine = self.checkpoint_signature()
        if saved["base"] != mine["base"]:
            raise ConfigError(key, f"the checkpoint was trained on base model {saved['base']!r}, this run uses "
                              f"{mine['base']!r}", "set model.base.name_or_path to the checkpoint's base, or start a new run")
        roles = saved["bank"].get("roles", {})
        saved_mode = saved.get("mode") or ("shared_lora" if len(set(roles.values())) == 1 else "bipolicy")
        if saved_mode != self.mode:
            raise ConfigError(key, f"the checkpoint was trained with model.mode {saved_mode}, this run uses {self.mode}",
                              f"set model.mode: {saved_mode} to resume it, or start a new run (another run.name)")
        diffs = _diff(saved["bank"], mine["bank"], "model.bank")
        if diffs:
            raise ConfigError(key, "the checkpoint's adapters differ from this run's: " + "; ".join(diffs),
                              "use the adapter settings of the checkpoint's run, or start a new run (another run.name)")
        if saved.get("anchor", "base") != mine.get("anchor", "base"):
            raise ConfigError(key, f"the checkpoint was trained with model.anchor {saved.get('anchor', 'base')}, this "
                              f"run uses {mine.get('anchor', 'base')}", "resume with the checkpoint's model.anchor, or "
                              "start a new run (another run.name)")
        if saved.get("initial", {}) != mine.get("initial", {}):
            raise ConfigError(key, "the adapters this run starts from (model.bank.adapters.<name>.init_from) are not "
                              f"the ones the checkpoint started from (sha256 {saved.get('initial', {})} vs "
                              f"{mine.get('initial', {})})", "point init_from at the adapters the run started "
                              "from (their files changed?), or start a new run (another run.name)")
        if "state_dict" not in checkpoint:
            return  # a sharded checkpoint's loop state: the strategy loads (and checks) its tensors itself
        expected = {k for k, _ in self.named_parameters() if self.bank.owner_of(k) is not None}
        missing = expected - set(checkpoint["state_dict"])
        if missing:
            raise ConfigError(key, f"the checkpoint lacks {len(missing)} adapter tensors (e.g. {sorted(missing)[0]})",
                              "resume from a complete abspo checkpoint")

    def check_resume(self, checkpoint: dict) -> None:
        """Raise a ConfigError unless this run's optimizers are the checkpoint's. The optimizer and scheduler
        states a resume loads hold their own class, learning rate, betas and weight decay: a changed setting would
        be silently ignored (or, for another optimizer class, fail mid-run on the state's missing entries).
        Checkpoints from before this check carry no optimizer settings and are taken as they are."""
        saved = checkpoint.get("abspo", {}).get("optimizers")
        if saved is None:
            return
        diffs = _diff(saved, self.checkpoint_signature()["optimizers"], "model.optimizers")
        if diffs:
            raise ConfigError("--ckpt_path", "the checkpoint's optimizer states were made with other settings, which "
                              "a resume would keep: " + "; ".join(diffs), "resume with the checkpoint's optimizer "
                              "settings, or start a new run (another run.name)")


def _diff(saved, mine, path: str) -> list[str]:
    """Human-readable differences between two nested dicts: 'key: checkpoint X, this run Y'."""
    if isinstance(saved, dict) and isinstance(mine, dict):
        out = []
        for k in sorted(set(saved) | set(mine), key=str):
            if k not in mine:
                out.append(f"{path}.{k}: in the checkpoint, not in this run")
            elif k not in saved:
                out.append(f"{path}.{k}: in this run, not in the checkpoint")
            else:
                out += _diff(saved[k], mine[k], f"{path}.{k}")
        return out
    return [] if saved == mine else [f"{path}: checkpoint {saved!r}, this run {mine!r}"]


def unrevised_seeds(seeds: list[Seed], fraction: float) -> set[int]:
    """Indices of the seeds that skip the attacker: the same share of the harmful and of the benign seeds."""
    chosen: set[int] = set()
    for label in (True, False):
        indices = [i for i, s in enumerate(seeds) if s.harmful == label]
        chosen.update(indices[: round(len(indices) * fraction)])
    return chosen


def sampling_key(batch_index: int, game: int, role: str) -> int:
    """The sampling key of a role's turn in game ``game`` of batch ``batch_index`` (and the run's seed): what
    makes a game the same on any process, in any batch layout, and after a resume."""
    base = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
    return zlib.crc32(f"{base}/{batch_index}/{game}/{role}".encode())


def _pad_to(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, t - x.shape[1]))


def judge_counts(exchanges: list[Exchange]) -> tuple[int, int]:
    """(exchanges sent to the judge, of which it left unlabelled): the games the defender played. A forfeit is
    never judged (the attacker is paid its table's minimum), so it is neither."""
    judged = [e for e in exchanges if "defender" in e.turns]
    return len(judged), sum(e.verdict is None or not e.verdict.complete for e in judged)


def game_metrics(exchanges: list[Exchange]) -> dict[str, float]:
    """Rates that say how the game is going (fractions in [0, 1]). ``degenerate_rate``: defender replies that are
    no answer at all (:mod:`abspo.degenerate`); ``attacker_forfeit_rate``: attacker turns with nothing playable;
    ``unlabelled_rate``: of the exchanges sent to the judge (:func:`judge_counts`), those it left unlabelled."""
    labelled = [e for e in exchanges if e.verdict is not None and e.verdict.complete]
    harmful = [e for e in labelled if e.seed_harmful]
    benign = [e for e in labelled if not e.seed_harmful]
    attacks = [e for e in exchanges if e.revised]
    sent, unlabelled = judge_counts(exchanges)
    out = {
        "game/unlabelled_rate": unlabelled / max(1, sent),
        "game/unlabelled": float(unlabelled),
    }
    if harmful:
        out["game/attack_success_rate"] = sum(e.verdict.response_harmful for e in harmful) / len(harmful)
    if benign:
        out["game/benign_refusal_rate"] = sum(e.verdict.refusal for e in benign) / len(benign)
    if attacks:
        out["game/attacker_format_failure_rate"] = sum(not e.attacker_well_formed for e in attacks) / len(attacks)
        out["game/attacker_forfeit_rate"] = sum(e.forfeited for e in attacks) / len(attacks)
    answered = [e for e in exchanges if "defender" in e.turns]
    if answered:
        out["game/degenerate_rate"] = sum(e.degenerate is not None for e in answered) / len(answered)
    reasoning = [e for e in exchanges if e.defender_well_formed is not None]
    if reasoning:
        out["game/defender_format_failure_rate"] = sum(not e.defender_well_formed for e in reasoning) / len(reasoning)
    return out


def samples_markdown(exchanges: list[Exchange]) -> str:
    """A markdown table of games for TensorBoard's text tab."""

    def cell(text: str | None, limit: int = 300) -> str:
        text = (text or "").replace("|", "\\|").replace("\n", " ")
        return text[:limit] + ("…" if len(text) > limit else "")

    rows = ["| seed (label) | attacker prompt | defender response | verdict | rewards |", "|---|---|---|---|---|"]
    for e in exchanges:
        v = e.verdict
        verdict = "—" if v is None else f"req_harm={v.prompt_harmful} refusal={v.refusal} resp_harm={v.response_harmful}"
        label = "harmful" if e.seed_harmful else "benign"
        prompt = e.prompt if e.revised else "(unrevised)"
        rewards = ", ".join(f"{k}={v:+.2f}" for k, v in e.rewards.items())
        rows.append(f"| {cell(e.seed)} ({label}) | {cell(prompt)} | {cell(e.response)} | {verdict} | {rewards} |")
    return "\n".join(rows)


