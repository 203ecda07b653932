"""Float32 arithmetic on a 16-bit model, for the passes whose log-probs are compared with each other.

The KL to the anchor is a difference of two log-probs of the same tokens: under the role (base + adapter) and under
the anchor (the base alone). In bfloat16 each of those forwards rounds its activations at every op, and two forwards
whose weights differ by a near-zero adapter round differently: on SmolLM2 the per-token KL of a near-zero adapter
reads 2.9e-3 in bfloat16 against 4.3e-7 in float32 (``benchmarks/bench_kl_precision.py``), a floor as large as
the KL a run starts with. The weights are not the problem (both forwards read the same bfloat16 values); the
arithmetic is.

:class:`Float32Compute` runs every op of a block in float32: a bfloat16 or float16 tensor argument is upcast when an
op reads it, and a cast back to 16 bits inside the model's code (RMSNorm's ``.to(input_dtype)``) is kept at
float32. So a 16-bit model scores as the float32 model with the same weight values would, without a float32 copy of
its weights in memory: each weight is upcast as its op runs and freed after (the last one upcast is kept, so a
chunked LM head reuses one copy). It is meant for no-gradient scoring passes (``AlgorithmConfig.kl_precision``);
the cost is float32 matmuls in those passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

LOW_PRECISION = (torch.bfloat16, torch.float16)
_EXACT_IN_16_BITS = {"embedding"}
"""Ops whose 16-bit result is exact (a table lookup): run as they are, then widened, so that no float32 copy of an
embedding table is made."""
_TO_16_BITS = {"bfloat16", "half"}


_IN_PLACE_OPERATORS = {f"__i{op}__" for op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow",
                                                 "and", "or", "xor", "lshift", "rshift")} | {"__setitem__"}


def _writes_in_place(name: str) -> bool:
    """``add_``, ``copy_``, ``__setitem__``, ``__iadd__``...: the op writes into its first argument."""
    return (name.endswith("_") and not name.startswith("__")) or name in _IN_PLACE_OPERATORS


class Float32Compute(TorchFunctionMode):
    """Inside the block, ops compute in float32 whatever the dtype of their 16-bit tensor arguments (module
    docstring). Tensors already float32, integer or boolean pass through; results are float32."""

    def __init__(self):
        super().__init__()
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (parameter, its version, float32 copy)

    def _upcast(self, x):
        if isinstance(x, torch.dtype):
            return torch.float32 if x in LOW_PRECISION else x  # a cast to 16 bits inside the model stays float32
        if not isinstance(x, torch.Tensor) or x.dtype not in LOW_PRECISION:
            return x
        if isinstance(x, torch.nn.Parameter) and not x.is_inference():  # a weight: one copy while consecutive
            if self._last is None or self._last[0] is not x or self._last[1] != x._version:  # ops read it
                self._last = (x, x._version, x.float())
            return self._last[2]
        return x.float()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":  # attribute reads (.dtype, .shape, .T) see the real tensor; the op reading it upcasts
            return func(*args, **kwargs)
        if name in _EXACT_IN_16_BITS:  # a lookup: the same values, gathered before they are widened
            return func(*args, **kwargs).float()
        if name in _TO_16_BITS:
            return args[0].float()
        target = kwargs.get("out", args[0] if args and _writes_in_place(name) else None)
        if isinstance(target, torch.Tensor) and target.dtype in LOW_PRECISION:
            raise RuntimeError(f"Float32Compute: {name} writes into a {target.dtype} tensor made outside the block; "
                               "its float32 copy would take the write and the tensor would not")
        if name == "view" and any(isinstance(a, torch.dtype) for a in args[1:]):
            return func(*args, **kwargs)  # a reinterpretation of the bits, not a cast
        args, kwargs = tree_map(self._upcast, (args, kwargs))
        return func(*args, **kwargs)

    def __exit__(self, *exc):
        self._last = None
        return super().__exit__(*exc)


@contextmanager
def float32_compute(device_type: str) -> Iterator[None]:
    """Ops in the block compute in float32 (:class:`Float32Compute`), autocast off on ``device_type`` too (under
    ``trainer.precision: bf16-mixed`` autocast would turn a float32 matmul back into a bfloat16 one)."""
    with torch.autocast(device_type, enabled=False), Float32Compute():
        yield
