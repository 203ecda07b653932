"""Rollouts on vLLM: the frozen base loaded once by the engine, each role's adapter served as a LoRA request.

ABS fits a serving engine unusually well: the base never changes, so it is loaded into vLLM once and never
synchronised; what changes after each optimizer step is one role's LoRA adapter (megabytes). The protocol:

* each adapter has a *version*; an optimizer step of the adapter makes the engine's copy stale
  (:meth:`VLLMRollouts.mark_stale`);
* the next rollout of a role on a stale adapter exports it as a PEFT folder (``bank.export``, safetensors) under a
  new name and integer id, sends its turns with that ``LoRARequest``, and removes the previous id from the engine:
  no merge into the base, no full-weight transfer, both roles served side by side by one engine;
* a game's turn carries a per-request seed (its sampling key), so a batch is reproducible on the engine;
* the trainer re-scores every sampled turn itself (``old_logprobs: sampler`` is refused with this backend), so the
  update's ratio and KL come from the trainer's own forward. The engine's sampling log-probs serve one purpose:
  truncated importance sampling (``model.algorithm.rollout_is_cap``, on by default), which weights each token by
  min(pi_trainer / pi_engine, cap) because the engine's kernels sample from a slightly different policy than the
  trainer's forward scores. They are asked for after temperature (``logprobs_mode: processed_logprobs``, vLLM
  0.10.2 or later), the distribution the turn was drawn from.

Select it with ``model.rollout.backend: vllm`` (``pip install abspo[vllm]``, one CUDA GPU beside the trainer's
model, colocated). The engine class is a setting (``model.rollout.vllm.engine``, default ``vllm.LLM``): the tests
run the protocol against ``tests/fake_vllm.py``, an engine with vLLM's interface built on Hugging Face
``generate``. **This backend has not run against a real vLLM**: vLLM cannot be installed on the machines abspo is
developed on (no CUDA, and too large for the lent GPU's offline image).
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from abspo.core.errors import ConfigError
from abspo.rl.rollout import DecodingConfig, Generation


@dataclass
class VLLMConfig:
    """The vLLM engine of ``model.rollout.backend: vllm``."""

    engine: str = "vllm.LLM"
    """Class path of the engine (vLLM's offline ``LLM``, or anything with its ``generate`` and ``llm_engine``)."""
    gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory the engine may take (weights + KV cache); the trainer's model needs the rest."""
    max_model_len: int | None = None
    """Longest prompt + completion (None: the model's own limit)."""
    enforce_eager: bool = False
    """Skip CUDA graph capture (slower decoding, faster start, less memory)."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Any other keyword arguments of the engine's constructor."""


@dataclass
class RolloutConfig:
    """Which engine samples the games' turns."""

    backend: Literal["hf", "vllm"] = "hf"
    """hf: Hugging Face ``generate`` on the trainer's own model (every device, every strategy, keyed sampling
    that is identical on any number of processes). vllm: a vLLM engine serving both role adapters as LoRA requests
    (one GPU, one process; see abspo.training.vllm_rollouts)."""
    hf: DecodingConfig = field(default_factory=DecodingConfig)
    """The hf backend's KV cache and compilation (a static cache and compiled decoding for GPUs)."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's ``LoRAConfig`` accepts as ``max_lora_rank`` (its kernels are built for these; any other is
refused when the engine is built). An adapter of a lower rank is served under the next one up."""


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that serves adapters of rank ``rank``; a ConfigError above 512."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ConfigError("model.bank.adapters", f"LoRA rank {rank} is above {VLLM_LORA_RANKS[-1]}, the largest vLLM "
                      "serves", f"use r <= {VLLM_LORA_RANKS[-1]}, or model.rollout.backend: hf")


def engine_class(config: VLLMConfig) -> type:
    """The engine class ``config.engine`` names; a ConfigError saying how to install it when it cannot be imported
    (checked when the module is built, before any training)."""
    module_name, _, class_name = config.engine.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError("model.rollout.vllm.engine", f"cannot import {config.engine!r} ({type(err).__name__}: "
                          f"{err})", "pip install 'abspo[vllm]' on a CUDA machine, or use model.rollout.backend: hf"
                          ) from None


class VLLMRollouts:
    """The engine, and which version of each adapter it holds (see the module docstring)."""

    def __init__(self, config: VLLMConfig, base_folder: Path, dtype: str, max_lora_rank: int, adapters: list[str],
                 export, workdir: Path | None = None, logprobs: bool = False):
        """``export(adapter, folder)`` writes the trainer's current ``adapter`` as a PEFT folder. ``logprobs``: ask
        for each sampled token's log-prob (after temperature), for truncated importance sampling."""
        kwargs = {"gpu_memory_utilization": config.gpu_memory_utilization, "enforce_eager": config.enforce_eager,
                  **({"max_model_len": config.max_model_len} if config.max_model_len else {}),
                  **({"logprobs_mode": "processed_logprobs"} if logprobs else {}), **config.engine_kwargs}
        self.logprobs = logprobs
        self.engine = engine_class(config)(model=str(base_folder), dtype=dtype, enable_lora=True,
                                           max_lora_rank=vllm_max_lora_rank(max_lora_rank), max_loras=len(adapters),
                                           **kwargs)
        self.export = export
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="abspo-vllm-adapters-"))
        self.versions = {a: 0 for a in adapters}  # the trainer's version of each adapter
        self.served: dict[str, tuple[int, Any]] = {}  # adapter -> (version, LoRARequest) the engine holds
        self._next_id = 1

    def mark_stale(self, adapter: str) -> None:
        """The trainer stepped ``adapter``: the engine's copy is out of date."""
        self.versions[adapter] += 1

    def lora_request(self, adapter: str):
        """The engine's request for the trainer's current ``adapter``, pushing a new version first if stale."""
        version = self.versions[adapter]
        held = self.served.get(adapter)
        if held is not None and held[0] == version:
            return held[1]
        from_vllm = _lora_request_class()
        folder = self.workdir / f"{adapter}-v{version}"
        self.export(adapter, folder)
        request = from_vllm(f"{adapter}-v{version}", self._next_id, str(folder))
        self._next_id += 1
        if held is not None:
            _, old = held
            remove = getattr(getattr(self.engine, "llm_engine", None), "remove_lora", None)
            if remove is not None:
                remove(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.served[adapter] = (version, request)
        return request

    def generate(self, adapter: str, prompts: list[str], tokenizer, max_new_tokens: int, temperature: float,
                 keys: list[int]) -> Generation:
        """One completion per prompt from the engine with ``adapter``'s current version, seeded per request."""
        from_vllm = _sampling_params_class()
        params = [from_vllm(n=1, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens, seed=key,
                            skip_special_tokens=True, logprobs=0 if self.logprobs else None) for key in keys]
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        outputs = self.engine.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                                       lora_request=self.lora_request(adapter), use_tqdm=False)
        completions = [list(o.outputs[0].token_ids) for o in outputs]
        # logprobs=0: each position holds the sampled token's entry (and no other)
        sampled = [[float(step[token].logprob) for step, token in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
                   for o in outputs] if self.logprobs else None
        return Generation(prompt_ids, completions, [o.outputs[0].text for o in outputs], sampled)


def _lora_request_class():
    try:
        from vllm.lora.request import LoRARequest
    except ImportError:
        return _LoRARequest
    return LoRARequest


def _sampling_params_class():
    try:
        from vllm import SamplingParams
    except ImportError:
        return _SamplingParams
    return SamplingParams


@dataclass
class _LoRARequest:
    """vLLM's ``LoRARequest`` fields, for engines other than vLLM (where vLLM is not installed)."""

    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class _SamplingParams:
    """The vLLM ``SamplingParams`` fields abspo sets, for engines other than vLLM."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    skip_special_tokens: bool = True
    logprobs: int | None = None
