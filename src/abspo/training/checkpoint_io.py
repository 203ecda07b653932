"""Checkpoint files that a kill at any moment leaves whole.

Lightning's ``TorchCheckpointIO`` serialises a checkpoint to memory and then writes it over the target file:
killed during that write (an OOM kill, a preempted node), ``last.ckpt`` is left truncated and the run cannot
resume from anything. :class:`AtomicCheckpointIO` writes to a temporary sibling, fsyncs it and renames it into
place (:func:`abspo.core.atomic.atomic_file`), so ``last.ckpt`` is always either the previous complete checkpoint or
the new one. ``abspo fit`` installs it unless the config names another checkpoint IO plugin.

Sharded (FSDP2) checkpoints are folders written by ``torch.distributed.checkpoint`` on every process, not through
this class; their ``meta.pt`` is written last, so a folder killed mid-write has no loop state and is refused on
resume with a clear message rather than read half.

Reading a checkpoint back for ``--ckpt_path`` (:func:`read_training_checkpoint`) is here too: a file or a sharded
folder, checked before any model loads, every failure one ConfigError line instead of a traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from abspo.core import run_folder
from abspo.core.atomic import atomic_file, recover_folder
from abspo.core.errors import ConfigError

SHARDED_KEY = "abspo_read_from_shards"
"""Marks a checkpoint read whole from a sharded folder (by :func:`read_sharded_checkpoint`, never saved)."""


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


def last_checkpoint(run_dir: Path) -> Path:
    """``--ckpt_path last``: the run folder's ``last.ckpt``, completing first a sharded save killed between its two
    renames (:func:`abspo.core.atomic.recover_folder`)."""
    path = run_dir / run_folder.CHECKPOINTS / "last.ckpt"
    recover_folder(path)
    if not path.exists():
        raise ConfigError("--ckpt_path", f"there is no checkpoint to resume at {path}",
                          "check run.name / run.output_root (the run folder is <output_root>/<name>), "
                          "or drop --ckpt_path to start a new run")
    return path


def read_training_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` (a ``.ckpt`` file, or a sharded checkpoint folder), read on the CPU without
    unpickling code. An adapter export or anything else that is no abspo checkpoint is a ConfigError naming
    ``--ckpt_path``, the option every checkpoint a user gives arrives through."""
    if not path.exists():
        raise ConfigError("--ckpt_path", f"checkpoint file {str(path)!r} does not exist",
                          "point it at a .ckpt file, or use `last` for this run's latest checkpoint")
    if path.is_dir():
        if (path / "adapter_config.json").is_file() or (path / "defender" / "adapter_config.json").is_file():
            raise ConfigError("--ckpt_path", f"{path} is an adapter export (PEFT folder), not a training checkpoint",
                              "resume from this run's `last` or a .ckpt file; evaluate an adapter folder with "
                              f"abspo test --ckpt_path {path}")
        return read_sharded_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user-facing problem here
        raise ConfigError("--ckpt_path", f"{path} is not a readable checkpoint ({type(err).__name__})",
                          "point it at a checkpoint written by abspo") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError("--ckpt_path", f"{path} is not a Lightning checkpoint (no state_dict)",
                          "point it at a checkpoint written by abspo")
    return checkpoint


def read_sharded_checkpoint(path: Path) -> dict:
    """A sharded (FSDP2) checkpoint folder as abspo's FSDP2Strategy writes it: the loop state in ``meta.pt``, the
    adapter tensors in torch.distributed.checkpoint files. Returns the loop state with ``state_dict`` holding the
    whole adapter tensors (LoRA-sized; read in this one process), so that it can be checked, and evaluated by
    ``abspo test`` on one process; ``fit`` resumes it through the strategy, shard by shard."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load

    prefix = "state_dict."
    try:
        checkpoint = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
        reader = FileSystemReader(str(path))
        saved = reader.read_metadata().state_dict_metadata
        tensors = {k[len(prefix):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
                   for k, m in saved.items() if k.startswith(prefix) and hasattr(m, "size")}
        dcp_load({"state_dict": tensors}, storage_reader=reader, no_dist=True)
    except Exception as err:  # noqa: BLE001 - any unreadable folder is a user-facing problem here
        raise ConfigError("--ckpt_path", f"{path} is not a readable sharded checkpoint folder ({type(err).__name__})",
                          "point it at a checkpoint written by abspo") from None
    checkpoint["state_dict"] = tensors
    checkpoint[SHARDED_KEY] = True
    return checkpoint
