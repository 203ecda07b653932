"""Checkpoint files that a kill at any moment leaves whole.

Lightning's ``TorchCheckpointIO`` serialises a checkpoint to memory and then writes it over the target file:
killed during that write (an OOM kill, a preempted node), ``last.ckpt`` is left truncated and the run cannot
resume from anything. :class:`AtomicCheckpointIO` writes to a temporary sibling, fsyncs it and renames it into
place (:func:`abspo.atomic.atomic_file`), so ``last.ckpt`` is always either the previous complete checkpoint or
the new one. ``abspo fit`` installs it unless the config names another checkpoint IO plugin.

Sharded (FSDP2) checkpoints are folders written by ``torch.distributed.checkpoint`` on every process, not through
this class; their ``meta.pt`` is written last, so a folder killed mid-write has no loop state and is refused on
resume with a clear message rather than read half.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from abspo.atomic import atomic_file
from abspo.errors import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic and durable (temporary file, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        try:
            with atomic_file(Path(path)) as fh:
                torch.save(checkpoint, fh)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise ConfigError(str(path), f"no space left while writing this checkpoint ({err.strerror}); the "
                              "previous checkpoint is intact", "free space there (or move the run with "
                              "run.output_root), then resume with --ckpt_path last") from None

    def load_checkpoint(self, path, map_location: Any | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # abspo checkpoints hold tensors and plain types only: never unpickle code, whatever the caller asks.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
