"""The guards that stop a run which can no longer learn, instead of letting it train on nothing for hours.

Two conditions, each configured in :class:`GuardConfig` (``model.guards``):

- **non-finite updates**: an update whose loss or gradient is NaN or inf is skipped (the adapter and its
  optimizer state stay as they were); ``max_consecutive_nonfinite`` of them in a row for one adapter stop the run.
- **a judge that labels nothing**: more than ``max_unlabelled_share`` of the exchanges sent to the judge over the
  last ``unlabelled_window`` batches came back unlabelled (a dead judge server, for instance).

A guard returns the reason to stop; the module stops after the batch, and the checkpoint written at the end of
training then holds the weights from before the first bad update.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from abspo.core.errors import ConfigError
from abspo.game.rules import Exchange
from abspo.training.play import judge_counts


@dataclass
class GuardConfig:
    """What stops a run that can no longer learn, instead of letting it train on nothing for hours."""

    max_consecutive_nonfinite: int = 3
    """A role update whose loss or gradient is not finite (NaN, inf) is skipped: the adapter and its optimizer
    state stay as they were (logged as <role>/skipped_nonfinite). This many in a row for one adapter stop the run,
    whose last.ckpt then holds the weights from before the first of them."""
    max_unlabelled_share: float = 0.8
    """Stop when more than this share of the exchanges sent to the judge over the last unlabelled_window batches
    came back unlabelled (a dead or failing judge server: RemoteJudge turns every failure into no label). 1.0:
    never stop."""
    unlabelled_window: int = 10
    """Batches over which max_unlabelled_share is measured."""

    def validate(self) -> None:
        for key in ("max_consecutive_nonfinite", "unlabelled_window"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.guards.{key}", f"must be >= 1, got {getattr(self, key)}", "use a positive integer")
        if not 0.0 < self.max_unlabelled_share <= 1.0:
            raise ConfigError("model.guards.max_unlabelled_share", f"must be in (0, 1], got {self.max_unlabelled_share}",
                              "use e.g. 0.8, or 1.0 to never stop")


class Guards:
    """The state behind the guards: each adapter's run of non-finite updates, and the judge's recent counts."""

    def __init__(self, cfg: GuardConfig):
        cfg.validate()
        self.cfg = cfg
        self.nonfinite_streak: dict[str, int] = defaultdict(int)  # adapter -> updates skipped in a row
        self.judged: list[tuple[int, int]] = []  # (sent to the judge, of which unlabelled) of the latest batches

    def after_update(self, adapter: str, finite: bool) -> str | None:
        """Record whether ``adapter``'s update was finite; the reason to stop, or None."""
        if finite:
            self.nonfinite_streak[adapter] = 0
            return None
        self.nonfinite_streak[adapter] += 1
        streak = self.nonfinite_streak[adapter]
        if streak < self.cfg.max_consecutive_nonfinite:
            return None
        return (f"{streak} consecutive updates of adapter {adapter!r} had a non-finite loss or gradient (each was "
                "skipped: its weights are those from before the first). Lower its learning rate or "
                "model.algorithm.max_grad_norm, check the judge's rewards for NaN, then resume with --ckpt_path last")

    def after_judging(self, exchanges: list[Exchange]) -> str | None:
        """Record a batch's judged games (``exchanges``: the whole batch, every process's); the reason to stop when
        the judge left too many of the window's exchanges unlabelled, or None."""
        self.judged = (self.judged + [judge_counts(exchanges)])[-self.cfg.unlabelled_window:]
        sent, unlabelled = map(sum, zip(*self.judged))
        share = unlabelled / max(1, sent)
        if len(self.judged) < self.cfg.unlabelled_window or share <= self.cfg.max_unlabelled_share:
            return None
        return (f"the judge left {unlabelled} of the {sent} exchanges of the last {len(self.judged)} batches "
                f"unlabelled ({share:.0%} > model.guards.max_unlabelled_share {self.cfg.max_unlabelled_share:.0%}): "
                "nothing is being learnt. Check the judge (a RemoteJudge's server and its log lines), then resume "
                "with --ckpt_path last")
