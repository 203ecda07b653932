"""Reasoning retention: does red-team training cost a role its general ability?

Self-play rewards the defender for refusing harmful requests and answering benign ones, and the attacker
for jailbreak prose. Neither reward says anything about arithmetic, so a role can drift into refusing or
rambling on ordinary questions while its game rewards look fine. This callback measures that drift against
the right reference: the defender's KL anchor (``module.bank.anchor("defender")``), where it started: the
frozen base, or its frozen starting adapter under ``model.anchor: initial``.

* Before the first training step the anchor is scored once on a fixed task (same items every time; greedy
  decoding or log-likelihood, so the score is deterministic).
* Every ``every_n_steps`` optimizer steps (``trainer.global_step``) each role in ``roles`` is scored on the
  same items, and ``retention/<role>/score``, ``retention/<role>/drop`` (anchor score minus role score, on
  the items both were scored on) and ``retention/anchor/score`` are logged, with ``.../n``: the item counts.
* A drop above ``max_drop`` is a violation: ``on_violation: warn`` emits a :class:`RetentionWarning` and
  training goes on; ``stop`` first saves ``<run dir>/checkpoints/retention-stop.ckpt`` (the adapters right
  at the violation, for inspection or a resume with other settings), then stops the run after this batch.

A check is bounded in time with ``time_budget_s``: no new batch of items starts once the budget is spent,
and the drop is computed on the items that were scored (the count is logged). Scores are reduced with
``torchmetrics.MeanMetric``, so every process sees the same score and takes the same decision. The model's
train/eval mode of every submodule and the role routing are restored after each check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric

from abspo.core import run_folder
from abspo.weights.bank import ROLES
from abspo.weights.distributed import Collective
from abspo.core.errors import ConfigError
from abspo.evaluation.tasks import EvalResult, TaskSpec, build_task, evaluate
from abspo.training.step_logging import log_batch_metrics

KEY = "trainer.callbacks[ReasoningRetention].init_args"
STOP_CHECKPOINT = "retention-stop.ckpt"


class RetentionWarning(UserWarning):
    """A role's reasoning score fell more than ``max_drop`` below the anchor's."""


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put every submodule in eval mode; restore each one's own mode on exit (the base stays eval in training)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def mean_over_ranks(values: list[bool] | list[float], device: torch.device | str = "cpu") -> float:
    """Mean of ``values`` reduced across processes (a plain mean on one process); NaN when there are none."""
    if not values:
        return float("nan")
    metric = MeanMetric().to(device)
    metric.update(torch.tensor([float(v) for v in values], device=device))
    return float(metric.compute())


class ReasoningRetention(L.Callback):
    def __init__(
        self,
        task: TaskSpec | None = None,
        every_n_steps: int = 50,
        roles: list[str] | None = None,
        max_drop: float = 0.1,
        on_violation: Literal["warn", "stop"] = "warn",
        max_new_tokens: int | None = None,
        batch_size: int = 8,
        time_budget_s: float | None = None,
    ):
        """
        Args:
            task: The reasoning task (name: gsm8k | multiple_choice | arithmetic, path, n, seed). Default:
                50 generated arithmetic items.
            every_n_steps: Score the roles every N optimizer steps (trainer.global_step; two per batch in the
                alternate schedule).
            roles: Roles to score (default ["defender"]; add "attacker" to watch it too).
            max_drop: Largest tolerated absolute accuracy drop below the anchor (0.1 = 10 points).
            on_violation: warn (log a RetentionWarning, keep training) or stop (save
                <run dir>/checkpoints/retention-stop.ckpt, then stop the run).
            max_new_tokens: Generation length of gsm8k/arithmetic answers (default: 256 for gsm8k, 16 for arithmetic).
            batch_size: Items per generation / scoring batch. Keep it fixed across runs: under bfloat16 the batch
                layout can change a greedy output, so scores are only comparable at one batch size.
            time_budget_s: Seconds per check (each role and the anchor separately); no new batch starts once they
                are spent, and scores cover the items scored so far. None: no limit.
        """
        self.spec = task or TaskSpec()
        self.roles = list(roles) if roles is not None else ["defender"]
        unknown = [r for r in self.roles if r not in ROLES]
        if unknown or not self.roles:
            raise ConfigError(f"{KEY}.roles", f"unknown or no roles {unknown or self.roles}", f"use roles from {list(ROLES)}")
        if every_n_steps < 1:
            raise ConfigError(f"{KEY}.every_n_steps", f"must be >= 1, got {every_n_steps}", "use e.g. 50")
        if not 0.0 <= max_drop <= 1.0:
            raise ConfigError(f"{KEY}.max_drop", f"{max_drop} is not in [0, 1]", "use an accuracy difference such as 0.1")
        if on_violation not in ("warn", "stop"):
            raise ConfigError(f"{KEY}.on_violation", f"unknown value {on_violation!r}", "use warn or stop")
        if batch_size < 1:
            raise ConfigError(f"{KEY}.batch_size", f"must be >= 1, got {batch_size}", "use e.g. 8")
        if time_budget_s is not None and time_budget_s <= 0:
            raise ConfigError(f"{KEY}.time_budget_s", f"must be > 0, got {time_budget_s}", "use seconds, or null for no limit")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ConfigError(f"{KEY}.max_new_tokens", f"must be >= 1, got {max_new_tokens}", "use e.g. 16")
        self.every_n_steps, self.max_drop, self.on_violation = every_n_steps, max_drop, on_violation
        self.batch_size, self.time_budget_s = batch_size, time_budget_s
        # Built here so that a bad task file fails when the config is read, before anything is trained or written.
        self.task = build_task(self.spec, max_new_tokens, key=f"{KEY}.task")
        self.anchor: EvalResult | None = None
        self.last: dict[str, float] = {}
        """Metrics of the latest check (what was logged)."""
        self._last_step = 0
        self._batch_index = 0

    # -- scoring ---------------------------------------------------------------------------------------------
    def score(self, module: L.LightningModule, routed: AbstractContextManager, limit: int | None = None) -> EvalResult:
        """Score the model ``routed`` yields (``module.bank.role(r)`` or ``module.bank.anchor(r)``)."""
        with routed as model, eval_mode(module.bank.model), torch.no_grad():
            return evaluate(self.task, model, module.tokenizer, self.batch_size, self.time_budget_s, limit,
                            Collective.current())

    def _report_budget(self, who: str, result: EvalResult) -> None:
        if not result.complete:
            rank_zero_info(f"ReasoningRetention: the time budget ({self.time_budget_s}s) ran out; {who} was scored on "
                           f"{result.scored} of {result.total} {self.task.name} items ({result.seconds:.1f}s)")

    # -- hooks -----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        self.anchor = self.score(module, module.bank.anchor("defender"))
        self._report_budget("the anchor", self.anchor)
        rank_zero_info(f"ReasoningRetention: the anchor scores {self.anchor.score:.3f} on {self.anchor.scored} "
                       f"{self.task.name} items ({self.anchor.seconds:.1f}s)")

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step // self.every_n_steps > self._last_step // self.every_n_steps:
            self._last_step = step
            self._batch_index = getattr(batch, "index", batch_idx)
            self.check(trainer, module)

    def check(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, float]:
        """Score every role against the anchor, log, and act on violations. Returns the logged metrics."""
        if self.anchor is None:
            raise RuntimeError("ReasoningRetention.check() before on_train_start scored the anchor")
        device = module.device
        metrics = {"retention/anchor/score": mean_over_ranks(self.anchor.correct, device),
                   "retention/anchor/n": float(self.anchor.scored)}
        violations = []
        for role in self.roles:
            result = self.score(module, module.bank.role(role), limit=self.anchor.scored)
            self._report_budget(f"the {role}", result)
            score = mean_over_ranks(result.correct, device)
            drop = mean_over_ranks(self.anchor.correct[: result.scored], device) - score
            metrics.update({f"retention/{role}/score": score, f"retention/{role}/drop": drop,
                            f"retention/{role}/n": float(result.scored)})
            if drop > self.max_drop:
                violations.append(f"{role} scores {score:.3f} vs the anchor's "
                                  f"{score + drop:.3f} on {result.scored} items (drop {drop:.3f} > max_drop {self.max_drop})")
        log_batch_metrics(module, metrics, step=self._batch_index, every_n_steps=1)  # at this check's batch only
        self.last = metrics
        if violations:
            self._on_violation(trainer, "; ".join(violations))
        return metrics

    def _on_violation(self, trainer: L.Trainer, message: str) -> None:
        message = f"ReasoningRetention at step {trainer.global_step} ({self.task.name}): {message}"
        if self.on_violation == "stop":
            path = Path(trainer.default_root_dir) / run_folder.CHECKPOINTS / STOP_CHECKPOINT
            trainer.save_checkpoint(path, weights_only=False)  # full state, to resume; every rank calls it (collective)
            trainer.should_stop = True
            message += f". Saved {path} and stopping the run"
        rank_zero_warn(message, category=RetentionWarning)
