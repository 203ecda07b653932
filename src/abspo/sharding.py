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
until all have).
"""

from __future__ import annotations

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
