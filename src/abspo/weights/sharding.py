"""FSDP2 for the adapter bank: the frozen base and the LoRA adapters sharded over the processes of a run.

Used under Lightning's ``ModelParallelStrategy`` (``SelfPlayModule.configure_model``): ``fully_shard`` on every
decoder layer, then on the Hugging Face causal-LM root, so that ``generate`` and the role forwards (which call
the PEFT model directly) run through FSDP's hooks. A layer's base weights (bf16, frozen) and its LoRA weights
(fp32, trainable) are one FSDP group: FSDP2 requires one dtype only among a group's *trainable* parameters.

FSDP2 reduce-scatters the *mean* of the processes' gradients; each micro-batch's loss is weighted by its share
of the *global* token count (:mod:`abspo.weights.distributed`), so the module multiplies it by the number of processes
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

from abspo.weights.distributed import full_tensor  # noqa: F401 - imported from here too; defined below the bank


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


def load_shards(bank, folder) -> None:
    """Fill a sharded bank built on the meta device: allocate each process's shards, then copy into them the
    base weights from ``folder``'s safetensors files, one tensor at a time (read from a memory map, cut to this
    process's shard), and each LoRA tensor's initial value. No process ever holds more than one whole tensor.
    Non-persistent buffers (rotary frequencies) are rebuilt from the model's config."""
    from pathlib import Path

    from safetensors import safe_open
    from torch.distributed.tensor import DTensor, distribute_tensor

    from abspo.weights.bank import AdapterBank

    model = bank.model
    root = model.get_base_model()
    device = next(p.device_mesh.device_type for p in model.parameters() if isinstance(p, DTensor))
    model.to_empty(device=device)
    _rebuild_buffers(root)
    params = dict(model.named_parameters())
    prefix = "base_model.model."
    by_file_name = {n[len(prefix):].replace(".base_layer.", "."): n for n in params
                    if AdapterBank._adapter_of(n) is None}

    def put(name: str, full: torch.Tensor) -> None:
        param = params[name]
        full = full.to(param.dtype)
        local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local() \
            if isinstance(param, DTensor) else full
        with torch.no_grad():
            (param.to_local() if isinstance(param, DTensor) else param).copy_(local)

    loaded = set()
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            for key in fh.keys():
                if key in by_file_name:
                    put(by_file_name[key], fh.get_tensor(key))
                    loaded.add(by_file_name[key])
    missing = sorted(set(by_file_name.values()) - loaded)
    if missing:
        raise ValueError(f"{folder} lacks {len(missing)} base weights (e.g. {missing[0]})")
    for name in params:
        if AdapterBank._adapter_of(name) is not None:
            put(name, bank.initial_value(name, tuple(params[name].shape)))  # zero-start or its init_from


def _rebuild_buffers(root: nn.Module) -> None:
    for module in root.modules():
        buffers = dict(module.named_buffers(recurse=False))
        if not buffers:
            continue
        if not hasattr(module, "config"):
            raise ValueError(f"cannot rebuild the buffers {sorted(buffers)} of {type(module).__name__} after a meta "
                             "initialisation")
        fresh = type(module)(config=module.config)
        for name, value in fresh.named_buffers(recurse=False):
            getattr(module, name).copy_(value)


@contextmanager
def gathered(bank) -> Iterator[None]:
    """Keep every FSDP2 module of ``bank`` unsharded for the duration (generation): one all-gather per layer
    instead of one per layer *and token*, at the cost of the full base in memory meanwhile. A no-op unsharded."""
    from torch.distributed.fsdp import FSDPModule

    root = getattr(bank.model, "get_base_model", lambda: bank.model)()  # (a full policy is never sharded)
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
