"""SelfPlayModule: the Lightning side of Anchored Bipolicy Self-Play. One batch of red-team games, then one
policy-gradient update per role.

The step (:meth:`SelfPlayModule.training_step`), in order:

1. **Play** (:mod:`abspo.training.play`). Each seed goes to the attacker (LoRA ``attacker`` active) or, for the unrevised
   share, straight to the defender. The defender (LoRA ``defender`` active) answers. Sampling is on-policy
   (``game.temperature``, no top-p) because the update is a policy gradient.
2. **Judge.** The judge labels every exchange; rewards come from the reward table. Exchanges with an
   unlabelled field are dropped from the update and counted; :mod:`abspo.training.guards` stops a run whose judge
   labels nothing.
3. **Learn** (:mod:`abspo.training.update`). For each adapter whose roles are due this batch
   (:class:`~abspo.core.config.ScheduleConfig`): the rollout batch with its advantages and KL to the anchor, the
   gradient pass, and that adapter's own optimizer step. Roles mapped to one adapter (the shared baseline) are
   updated together.

This module holds the parts together and talks to Lightning (optimizers, backward, logging, checkpoint hooks);
each concept has its own module: the play loop (:mod:`abspo.training.play`), the update (:mod:`abspo.training.update`), the
cross-field config checks (:mod:`abspo.training.checks`), what checkpoints hold and when a resume is refused
(:mod:`abspo.training.resume`), the stop guards (:mod:`abspo.training.guards`), and how processes keep step
(:mod:`abspo.training.lockstep`).

``trainer.max_steps`` counts optimizer steps, as Lightning does under manual optimization: in
``alternate`` mode each batch makes one step per adapter (two for ABS), in ``phases`` mode one. So
``max_steps: 40`` in alternate mode is 20 batches of games. (With ``accumulate_batches`` k, a role steps
every k batches.)

Several processes (``trainer.strategy: ddp``, or ``abspo.strategies.FSDP2Strategy`` for a sharded base): each
process plays its share of the batch's seeds, every turn is sampled with a key of (run seed, batch, game, role)
so a game does not depend on the process that plays it, and batch statistics and gradients are sums over the
processes, so N processes compute what one does (:mod:`abspo.weights.distributed`, :mod:`abspo.weights.sharding`).
"""

from __future__ import annotations

import contextlib
import time

import lightning as L
import torch

from abspo.training import resume
from abspo.weights.bank import ROLES, AdapterBank, Anchor, BankSpec, check_anchor
from abspo.training.checks import check_chat_template, check_model_settings
from abspo.training.checks import check_trainer as check_trainer_settings
from abspo.core.config import AlgorithmConfig, LoggingConfig, OptimizerConfig, ScheduleConfig, default_optimizers
from abspo.game.seeds import Seed, SeedBatch
from abspo.weights.distributed import Collective
from abspo.weights.full_policy import FullPolicy
from abspo.game.rules import Exchange, GameConfig
from abspo.training.guards import GuardConfig, Guards
from abspo.judges.base import Judge
from abspo.training.lockstep import Lockstep, Replicated
from abspo.weights.models import BaseModel, empty_base, load_base, meta_model, weight_folder
from abspo.weights.modes import Mode, resolve_mode, shared_init_from
from abspo.training.play import TurnSampler, game_metrics, judge_games, plan_games, play_games, sampling_key
from abspo.game.rewards import DEFAULT_TABLE, resolve_table
from abspo.weights.sharding import load_shards, shard_bank
from abspo.training.step_logging import log_batch_metrics, samples_markdown
from abspo.core.timing import PhaseClock
from abspo.training.update import PolicyUpdate
from abspo.training.vllm_rollouts import RolloutConfig, VLLMRollouts

BUILTIN_RANDOM = {"tiny-qwen2"}
"""Built-in bases initialised at random (no weight files): an engine gets the name, and builds the same weights."""


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
                general_sum (Self-RedTeam's, as published; pays noise like a refusal), zero_sum (likewise),
                zero_sum_guarded, or a custom role -> {outcome: weight} table.
            algorithm: Advantage estimator, KL anchor, loss, accumulation and clipping.
            schedule: Which role updates on which batch (alternate or phases).
            logging: Sample tables.
            meta_device: Build the base on the meta device with no weights (parameter accounting and config
                checks of paper-scale models on small machines; cannot train).
            mode: Who holds each role's trainable weights: bipolicy (ABS: a LoRA adapter per role), shared_lora
                (one adapter plays both roles) or shared_full (one fully trained policy, anchored to a frozen
                copy of the base). A config written for bipolicy runs in the shared modes as it is (abspo.weights.modes).
            guards: When a run that can no longer learn stops (non-finite updates, a judge that labels nothing).
            rollout: Which engine samples the turns: Hugging Face generate (default) or vLLM (abspo.training.vllm_rollouts).
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
        self.guards = Guards(guards or GuardConfig())
        self.rollout_cfg = rollout or RolloutConfig()
        self.reward_table = resolve_table(reward_table)
        check_model_settings(mode, self.base_cfg, self.bank_spec, self.optim_cfg, self.game, self.algorithm,
                             self.schedule, self.rollout_cfg)
        if meta_device:
            base_model, self.tokenizer = meta_model(self.base_cfg.name_or_path), None
        elif self.base_cfg.init_on_meta:
            base_model, self.tokenizer = empty_base(self.base_cfg)  # FSDP2 loads the shards (configure_model)
        else:
            base_model, self.tokenizer = load_base(self.base_cfg)
        check_chat_template(self.tokenizer, self.base_cfg, self.game)
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
        self.layout: Replicated = Replicated()  # how processes keep step; FSDP2: Lockstep (configure_model)
        self.clock = PhaseClock()  # seconds per phase of the current step (perf/<phase>_s)
        self.sampler = TurnSampler(self)
        self.updater = PolicyUpdate(self)
        self.stop_reason: str | None = None  # set by a guard; the trainer stops after the batch
        self.last_exchanges: list[Exchange] = []  # every game of the latest batch (callbacks read them)
        self._engine: VLLMRollouts | None = None  # built at the first vLLM rollout
        self._standalone_optimizers = None  # optimizers of learn() outside a Trainer
        self._pending_grads: dict[str, torch.Tensor] = {}  # from a checkpoint saved mid-accumulation

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
        """Refuse a strategy, process count or precision the self-play loop cannot run under
        (:func:`abspo.training.checks.check_trainer`). ``abspo fit`` calls this before anything is written (Lightning's
        ``setup`` comes after the run's config.yaml and logger folder); ``setup`` calls it again for runs driven
        from Python."""
        check_trainer_settings(trainer, self.mode, self.base_cfg, self.algorithm, self.rollout_cfg)

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: shard the base and the adapters with FSDP2 (:mod:`abspo.weights.sharding`)."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if self.layout.sharded or self._trainer is None or not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        shard_bank(self.bank, self.trainer.world_size, self.trainer.strategy.root_device.type)
        if self.base_cfg.init_on_meta:
            load_shards(self.bank, weight_folder(self.base_cfg))
        self.layout = Lockstep()

    @property
    def collective(self) -> Collective:
        """The processes this module trains with (one, or the DDP process group): see :mod:`abspo.weights.distributed`."""
        return Collective.current()

    @property
    def pad_id(self) -> int:
        """The token that pads scoring batches (0 without a tokenizer: a base on the meta device)."""
        return self.tokenizer.pad_token_id if self.tokenizer is not None else 0

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

    # -- the game (abspo.training.play) --------------------------------------------------------------------------
    def plan(self, seeds: list[Seed]) -> list[Exchange]:
        """The batch's games before they are played (:func:`abspo.training.play.plan_games`). Decided for the whole batch,
        so a data-parallel run plays exactly the games of a single process."""
        return plan_games(seeds, self.algorithm.group_size, self.game.unrevised_fraction)

    def play(self, seeds: list[Seed], batch_index: int = 0) -> list[Exchange]:
        """Play one game per seed (``group_size`` games per seed for GRPO). Returns the filled exchanges."""
        return self.play_games(self.plan(seeds), batch_index)

    def play_games(self, exchanges: list[Exchange], batch_index: int = 0) -> list[Exchange]:
        """Play the planned ``exchanges`` of batch ``batch_index``: attacker turns, defender turns, the judge's
        verdicts and the rewards. Each turn is sampled with the key of (run seed, batch, game, role)."""
        self.bank.model.eval()
        play_games(exchanges, self.sampler.for_batch(batch_index), self.tokenizer, self.game)
        return self.judge_games(exchanges)

    def judge_games(self, exchanges: list[Exchange]) -> list[Exchange]:
        """The judge's verdicts and the rewards of the played ``exchanges`` (:func:`abspo.training.play.judge_games`)."""
        return judge_games(exchanges, self.judge, self.reward_table, self.clock)

    def vllm_engine(self) -> VLLMRollouts:
        """The vLLM engine of ``rollout.backend: vllm``, built at first use (after a resume has loaded the
        adapters), holding the frozen base once and both role adapters as LoRA requests."""
        if self._engine is None:
            cfg = self.base_cfg
            first_role = {a: r for r, a in reversed(list(self.bank_spec.roles.items()))}
            self._engine = VLLMRollouts(
                self.rollout_cfg.vllm, cfg.name_or_path if cfg.name_or_path in BUILTIN_RANDOM else weight_folder(cfg),
                cfg.dtype, max(spec.r for spec in self.bank_spec.adapters.values()), list(self.bank_spec.adapters),
                export=lambda adapter, folder: self.bank.export(first_role[adapter], folder),
                logprobs=self.algorithm.rollout_is_cap is not None)
        return self._engine

    # -- the step ---------------------------------------------------------------------------------
    def training_step(self, batch: SeedBatch, batch_idx: int):
        start = time.perf_counter()
        self.sampler.reset()
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
        reason = self.guards.after_judging(exchanges)
        if reason is not None:
            self.stop(reason)
        for role in ROLES:
            rewards = [e.rewards[role] for e in exchanges if role in e.rewards]
            if rewards:
                metrics[f"{role}/reward"] = sum(rewards) / len(rewards)
        counters = [c for c in ("unparsed", "failed", "requests")  # running totals kept by model-based judges
                    if isinstance(getattr(self.judge, c, None), int)]
        metrics["game/truncated_prompts"] = float(collective.sum(torch.tensor(self.sampler.truncated)))
        totals = collective.sum(torch.tensor([getattr(self.judge, c) for c in counters] + [self.sampler.generated_tokens]))
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
        self._log_samples(exchanges, batch.index)
        self._check_replicas(batch.index)
        self.last_exchanges = exchanges
        if self._trainer is not None and hasattr(self.trainer.datamodule, "batches_served"):
            self.trainer.datamodule.batches_served = batch.index + 1

    def learn(self, exchanges: list[Exchange], batch_index: int) -> dict[str, float]:
        """Update every adapter whose roles are due at ``batch_index`` from the scored ``exchanges``, in the
        schedule's role order (:meth:`abspo.training.update.PolicyUpdate.update`); returns the update's metrics
        (``<role>/kl``, ``<roles>/loss``, ...).

        The one entry point of the update, for ``training_step`` and for anything that plays its own games
        (tests, notebooks): outside a Trainer it builds and keeps its own optimizers.
        """
        optimizers = self._optimizers_by_adapter()
        self.updater.last_rollouts = {}
        by_adapter: dict[str, list[str]] = {}
        for role in self.schedule.roles_to_update(batch_index):
            by_adapter.setdefault(self.bank.adapter_for(role), []).append(role)
        metrics: dict[str, float] = {}
        for adapter, roles in by_adapter.items():
            metrics.update(self.updater.update(adapter, roles, exchanges, *optimizers[adapter]))
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

    def _check_replicas(self, index: int) -> None:
        """Every ``logging.check_replicas_every_n_batches`` batches of a data-parallel run, check that every
        process holds the same adapters (a float64 checksum each, compared); a drift is a bug, so stop loudly."""
        every = self.logging_cfg.check_replicas_every_n_batches
        collective = self.collective
        if not collective.active or self.layout.sharded or not every or (index + 1) % every:
            return  # (sharded adapters differ between processes by design)
        if not collective.checksum_agrees(list(self.bank.adapter_state_dict().values())):
            raise RuntimeError(f"batch {index}: the adapters differ between processes; data-parallel training must "
                               "keep them identical (please report this with your config)")

    # -- what the update asks of Lightning ----------------------------------------------------------
    def accumulate_gradient(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` into the adapters' ``.grad``: through the trainer when there is one (precision
        plugins, strategies), plain autograd otherwise, so the step also runs outside a Trainer (benchmarks,
        notebooks). Under DDP the strategy's reducer is kept out (it would all-reduce every micro-batch and expect
        every adapter in every backward): the update sums each adapter's gradient once, itself."""
        if self._trainer is None:
            loss.backward()
            return
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        with block() if block is not None and self.collective.active else contextlib.nullcontext():
            self.manual_backward(loss)

    def clip_adapter_gradients(self, opt, params: list[torch.nn.Parameter], max_norm: float) -> None:
        """Clip the gradient norm of ``params`` (one adapter's) to ``max_norm``, through the trainer when there is
        one (its precision plugin unscales first)."""
        if self._trainer is None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            self.clip_gradients(opt, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")

    def adapter_changed(self, adapter: str) -> None:
        """``adapter``'s weights moved: a vLLM engine pushes the new version before its next rollout."""
        if self._engine is not None:
            self._engine.mark_stale(adapter)

    def stop(self, reason: str) -> None:
        """A guard's verdict: stop after this batch (its checkpoint is written as at any end of training)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._trainer is not None:
            self.trainer.should_stop = True

    # -- logging ----------------------------------------------------------------------------------
    def _log_samples(self, exchanges: list[Exchange], index: int) -> None:
        every = self.logging_cfg.samples_every_n_steps
        logger = self.logger
        if not every or index % every or logger is None or not hasattr(logger.experiment, "add_text"):
            return
        logger.experiment.add_text("games", samples_markdown(exchanges[: self.logging_cfg.samples_per_table]),
                                   global_step=index)  # the batch index, the x-axis of every scalar

    # -- checkpoints (abspo.training.resume) ---------------------------------------------------------------
    def checkpoint_signature(self) -> dict:
        """What a resume must agree with: :func:`abspo.training.resume.checkpoint_signature`."""
        return resume.checkpoint_signature(self)

    def check_checkpoint(self, checkpoint: dict, key: str = "--ckpt_path") -> None:
        """Raise a ConfigError unless ``checkpoint`` was written by a run with this base and these adapters."""
        resume.check_checkpoint(self, checkpoint, key)

    def check_resume(self, checkpoint: dict) -> None:
        """Raise a ConfigError unless this run's optimizers are the checkpoint's (:func:`abspo.training.resume.check_optimizers`)."""
        resume.check_optimizers(self, checkpoint)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if self.bank.owner_of(k) is not None}
        checkpoint["abspo"] = self.checkpoint_signature()
        checkpoint["abspo_accumulation"] = resume.accumulation_state(self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.check_checkpoint(checkpoint)
        saved = checkpoint.get("abspo_accumulation")
        if saved is not None:
            self._pending_grads = resume.restore_accumulation(self, saved)
            resume.set_gradients(self, self._pending_grads)

    def on_train_start(self) -> None:
        # The Trainer zeroes every gradient after loading the checkpoint (``Trainer._run_stage``): set them again.
        resume.set_gradients(self, self._pending_grads)
        self._pending_grads = {}
