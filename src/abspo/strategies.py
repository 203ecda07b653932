"""``FSDP2Strategy``: Lightning's ``ModelParallelStrategy`` with checkpoints that hold the adapters only.

Select it with ``trainer.strategy: {class_path: abspo.strategies.FSDP2Strategy}`` (``configs/tiny-fsdp2.yaml``);
``SelfPlayModule.configure_model`` then shards the base and the adapters with FSDP2 (:mod:`abspo.weights.sharding`).

Why a subclass: ``ModelParallelStrategy`` saves and loads the *whole* module state. Saving, it copies every
process's base shard to host memory at every checkpoint (gigabytes a save at 14B, for weights that never
change); loading, it asks the checkpoint for every base tensor and fails, since abspo checkpoints hold none.
Here the checkpoint is a ``torch.distributed.checkpoint`` folder of the adapter shards and the optimizer
states (each process writes its own shards, nothing is gathered), and of the gradient shards summed so far
when a run is saved in the middle of an ``accumulate_batches`` cycle, plus Lightning's loop state in ``meta.pt``,
and resuming loads exactly those into the sharded parameters and optimizers.

Saving is atomic: every process writes into a temporary sibling folder, and once all have finished, rank 0
swaps it into place (:func:`abspo.core.atomic.swap_into_place`). A run killed mid-save keeps its previous checkpoint
folder whole (Lightning's own save writes over the old shards in place).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from abspo.core.atomic import recover_folder, swap_into_place
from abspo.weights.bank import AdapterBank

META = "meta.pt"
PENDING_GRADS = "abspo_pending_grads"  # the folder's key for gradients summed mid-accumulation


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (``fully_shard``) for self-play: adapter-only sharded checkpoints. Takes ModelParallelStrategy's
    arguments; the defaults shard over every process. ``save_distributed_checkpoint`` must stay true (refused by
    ``SelfPlayModule.check_trainer``): a checkpoint is always a folder of every process's shards."""

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.lightning_module.state_dict().items() if AdapterBank._adapter_of(k) is not None}

    def lightning_module_state_dict(self) -> dict[str, Any]:
        # The sharded adapter tensors themselves (DTensors): each process writes its shards, no copy, no gather.
        return self._adapter_state()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(f".{path.name}.partial")
        if self.global_rank == 0:
            recover_folder(path)
            if partial.exists():
                shutil.rmtree(partial)  # a save killed earlier
        self.barrier("abspo_save_start")
        self._write_folder(checkpoint, partial)
        self.barrier("abspo_save_written")  # every process's shards are on disk
        if self.global_rank == 0:
            swap_into_place(partial, path)
        self.barrier("abspo_save_done")

    def _write_folder(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Every process writes its shards of the adapters, the optimizer states and the gradients pending in an
        accumulation cycle (``abspo_accumulation``) into ``path``; rank 0 writes the loop state (``meta.pt``),
        where the pending gradients are named, not held."""
        from torch.distributed.checkpoint import save as dcp_save

        path.mkdir(parents=True, exist_ok=True)
        state = {"state_dict": checkpoint.pop("state_dict"),
                 **{f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))}}
        accumulation = checkpoint.get("abspo_accumulation")
        if accumulation and accumulation["grads"]:
            state[PENDING_GRADS] = accumulation["grads"]
            checkpoint["abspo_accumulation"] = {**accumulation, "grads": {}, "sharded_grads": sorted(accumulation["grads"])}
        dcp_save(state, checkpoint_id=path)
        if self.global_rank == 0:
            torch.save(checkpoint, path / META)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint import load as dcp_load
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        path = Path(self.broadcast(checkpoint_path))
        checkpoint = torch.load(path / META, map_location="cpu", weights_only=True)  # loop state: plain types only
        checkpoint.pop("optimizer_states", None)  # loaded below; Lightning must not load them again
        adapters = self._adapter_state()  # views of the parameters: loaded in place
        optimizers = {f"optimizer_{i}": get_optimizer_state_dict(self.model, opt) for i, opt in enumerate(self.optimizers)}
        state = {"state_dict": adapters, **optimizers}
        accumulation = checkpoint.get("abspo_accumulation") or {}
        if accumulation.get("sharded_grads"):  # shaped like this run's shards: loading reshards them
            params = dict(self.lightning_module.named_parameters())
            state[PENDING_GRADS] = {n: torch.zeros_like(params[n]) for n in accumulation["sharded_grads"]}
        dcp_load(state, storage_reader=FileSystemReader(str(path)))
        for i, opt in enumerate(self.optimizers):
            set_optimizer_state_dict(self.model, opt, optim_state_dict=optimizers[f"optimizer_{i}"])
        if PENDING_GRADS in state:  # SelfPlayModule.on_load_checkpoint sets them as every process's .grad
            accumulation.update(grads=state[PENDING_GRADS], sharded=True)
        return checkpoint

    def load_optimizer_state_dict(self, checkpoint) -> None:
        pass  # done in load_checkpoint

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        pass  # done in load_checkpoint
