"""Progress that counts batches of games, not optimizer steps: a bar on a terminal, plain lines in a log file.

Under manual optimization ``trainer.max_steps`` counts optimizer steps, and ABS makes one per role per
batch, so Lightning's bar would run to ``max_steps`` while only half as many batches are played (and it
prints "Epoch 0/-2" for an endless seed stream). This bar's total is the number of batches left.

A cluster job's output is a file, where a bar is a stream of carriage returns or nothing at all: there
:class:`ProgressLines` prints one plain line every N batches instead (``abspo fit`` picks by whether the output
is a terminal, :func:`progress_callback`).
"""

from __future__ import annotations

import math
import sys

from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE


class _GameBatches:
    @property
    def total_train_batches(self):
        trainer = self.trainer
        per_batch = getattr(trainer.lightning_module, "optimizer_steps_per_batch", 1.0)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            remaining = math.ceil((trainer.max_steps - trainer.global_step) / per_batch)
            return min(trainer.num_training_batches, remaining)
        return trainer.num_training_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return "Self-play batches"

    def get_metrics(self, trainer, module):
        metrics = super().get_metrics(trainer, module)
        metrics.pop("v_num", None)
        return metrics


class GameRichProgressBar(_GameBatches, RichProgressBar):
    pass


class GameTQDMProgressBar(_GameBatches, TQDMProgressBar):
    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.set_description(self._get_train_description(0))
        return bar


def game_progress_bar():
    return GameRichProgressBar() if _RICH_AVAILABLE else GameTQDMProgressBar()


LINE_FIGURES = (("attacker/reward", "r_att", "{:+.3f}"), ("defender/reward", "r_def", "{:+.3f}"),
                ("game/attack_success_rate", "asr", "{:.2f}"), ("game/benign_refusal_rate", "benign_refusal", "{:.2f}"),
                ("game/degenerate_rate", "degenerate", "{:.2f}"), ("game/unlabelled_rate", "unlabelled", "{:.2f}"),
                ("perf/step_s", "s/batch", "{:.1f}"))
"""(metric, label, format) of each figure on a progress line, in order; a figure not measured this batch is left
out."""


class ProgressLines(Callback):
    """Print ``batch 12/60 | step 24 | r_att +0.250 | r_def -0.125 | asr 0.38 | ... | s/batch 45.1`` every
    ``every_n_batches`` batches (process 0 only)."""

    def __init__(self, every_n_batches: int = 1):
        self.every_n_batches = max(1, every_n_batches)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        index = getattr(batch, "index", batch_idx)
        if (index + 1) % self.every_n_batches or not trainer.is_global_zero:
            return
        print(self.line(trainer, module, index), flush=True)

    @staticmethod
    def line(trainer, module, index: int) -> str:
        per_batch = getattr(module, "optimizer_steps_per_batch", 1.0)
        total = f"/{math.ceil(trainer.max_steps / per_batch)}" if trainer.max_steps and trainer.max_steps > 0 else ""
        parts = [f"batch {index + 1}{total}", f"step {trainer.global_step}"]
        metrics = trainer.callback_metrics
        parts += [f"{label} {fmt.format(float(metrics[key]))}" for key, label, fmt in LINE_FIGURES if key in metrics]
        return " | ".join(parts)


def output_is_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress_callback(every_n_batches: int = 1) -> Callback:
    """The game progress bar on a terminal, else :class:`ProgressLines`."""
    return game_progress_bar() if output_is_terminal() else ProgressLines(every_n_batches)
