"""FSDP2 for the adapter bank: the frozen base and the LoRA adapters sharded over the processes of a run.

Used under Lightning's ``ModelParallelStrategy`` (``SelfPlayModule.configure_model``): ``fully_shard`` on every
decoder layer, then on the Hugging Face causal-LM root, so that ``generate`` and the role forwards (which call
the PEFT model directly) run through FSDP's hooks. A layer's base weights (bf16, frozen) and its LoRA weights
(fp32, trainable) are one FSDP group: FSDP2 requires one dtype only among a group's *trainable* parameters.

FSDP2 reduce-scatters the *mean* of the processes' gradients; each micro-batch's loss is weighted by its share
of the *global* token count (:mod:`abspo.distributed`), so the module multiplies it by the number of processes
and the mean is the one-process gradient, as under DDP. (A divide factor of 1 would say the same more
directly, but it needs ``ReduceOp.PREMUL_SUM``, which gloo lacks.)

FSDP2 runs collectives inside every forward and backward, so every process must run the same number of them:
the module pads its loops with throw-away work (a one-token forward, a zero-weighted backward) where its share
of the games is smaller, and generation runs with ``synced_gpus`` (a process whose turns ended keeps stepping
until all have). During generation the whole model is gathered once (:func:`gathered`) rather than layer by
layer for every decoded token; ``abspo plan`` counts that memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a Hugging Face causal LM (``model.model.layers`` for Llama/Qwen2/Mistral)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith("layers") and len(module) > 0:
            return module
    raise ValueError(f"no decoder layer list found in {type(model).__name__}")


def shard_bank(bank, world_size: int, device_type: str) -> None:
    """Apply FSDP2 to ``bank``'s model in place over ``world_size`` processes (a 1-D mesh)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (world_size,))
    root = bank.model.get_base_model()  # the HF causal LM inside PEFT
    for layer in decoder_layers(root):
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded (DTensor) parameter or gradient: a collective, call it on every process."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@contextmanager
def gathered(bank) -> Iterator[None]:
    """Keep every FSDP2 module of ``bank`` unsharded for the duration (generation): one all-gather per layer
    instead of one per layer *and token*, at the cost of the full base in memory meanwhile. A no-op unsharded."""
    from torch.distributed.fsdp import FSDPModule

    root = bank.model.get_base_model()
    if not isinstance(root, FSDPModule):
        yield
        return
    modules = [m for m in root.modules() if isinstance(m, FSDPModule)]
    root.set_reshard_after_forward(False)
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
        for m in modules:  # FSDP2's defaults: the root keeps its (small) parameters, the layers reshard
            m.set_reshard_after_forward(m is not root, recurse=False)
