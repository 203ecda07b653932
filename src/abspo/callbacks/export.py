"""Export each role's adapter as a standard PEFT folder, every N optimizer steps and at the end.

The folders (``<run dir>/adapters/<role>/``) load with ``PeftModel.from_pretrained(base, folder)`` and
are what you ship or serve (e.g. as a vLLM LoRA). They are written atomically: an export interrupted
half-way leaves the previous export intact.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from abspo.core import run_folder

class AdapterExport(L.Callback):
    def __init__(self, every_n_steps: int = 0, dirpath: str | None = None):
        """
        Args:
            every_n_steps: Export every N optimizer steps (trainer.global_step); 0 exports only at the end.
            dirpath: Output folder; default ``<trainer.default_root_dir>/adapters``.
        """
        self.every_n_steps = every_n_steps
        self.dirpath = dirpath
        self._last_step = -1

    def folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / run_folder.ADAPTERS

    def export(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        sharded = module.layout.sharded  # FSDP2: every process gathers, rank 0 writes
        if self._last_step == trainer.global_step or not (trainer.is_global_zero or sharded):
            return
        for role in module.bank.spec.roles:
            module.bank.export(role, self.folder(trainer) / role, write=trainer.is_global_zero)
        self._last_step = trainer.global_step

    def on_train_start(self, trainer, module) -> None:
        # Count from the step training starts at (a resume's), so that the first export falls on the next
        # multiple of N, not on the first batch.
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step // self.every_n_steps > self._last_step // self.every_n_steps:
            self.export(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.export(trainer, module)
