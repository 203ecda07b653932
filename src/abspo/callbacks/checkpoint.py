"""RunCheckpoint: Lightning's ModelCheckpoint that also writes ``last.ckpt`` when training ends or is stopped.

A step-based ``ModelCheckpoint`` saves only at multiples of ``every_n_train_steps``: a run whose ``max_steps``
is not such a multiple (or that a shared mode ends after an odd number of steps) would otherwise lose every
batch since the last multiple, and ``--ckpt_path last`` would resume from there. The same holds for a run
stopped by SIGTERM or Ctrl-C (:mod:`abspo.training.preemption`): Lightning stops it after a finished batch, and this
callback saves that batch before the process exits. Any other exception saves nothing: it may have come
mid-batch, and the previous checkpoint is the exact one.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class RunCheckpoint(ModelCheckpoint):
    def on_train_end(self, trainer, module) -> None:
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, module)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.save_last \
                and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
