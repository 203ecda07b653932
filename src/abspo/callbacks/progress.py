"""A progress bar that counts batches of games, not optimizer steps.

Under manual optimization ``trainer.max_steps`` counts optimizer steps, and ABS makes one per role per
batch, so Lightning's bar would run to ``max_steps`` while only half as many batches are played (and it
prints "Epoch 0/-2" for an endless seed stream). This bar's total is the number of batches left.
"""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
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
