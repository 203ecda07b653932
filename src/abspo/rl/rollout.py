"""Batched generation and sequence log-probabilities with Hugging Face models.

Generation left-pads prompts so every row continues at the right edge. For scoring, each sample becomes
``[left pad | prompt | completion | right pad]``: prompts end at one column, so the completion positions are
one contiguous slice and the LM head runs only on it (``logits_to_keep``), which matters with 50k-150k
token vocabularies. For Llama, Mistral and Qwen models the head goes further: it computes the log-probs of the
real completion tokens itself, in chunks, so that no [B, T, vocab] logits exist (:func:`completion_logprobs`).

Sampling and scoring use one distribution. ``generate`` runs with a clean generation config built from its
arguments alone: a model's own ``generation_config`` (Qwen2.5-Instruct ships ``repetition_penalty`` 1.05,
``top_k`` 20, ``top_p`` 0.8, temperature 0.7) is swapped out for the call, so no processor is inherited
silently. Sampling at temperature ``T`` draws from ``softmax(logits / T)``, and ``completion_logprobs`` scores
with the same ``T``, so the update's "old" log-probs are the ones the tokens were drawn with and the on-policy
ratio is 1. Truncating samplers (top-p, top-k) are not scored and are refused for training by the module.

Keyed sampling (``generate(..., keys=...)``): each row draws its tokens with the Gumbel-max trick from noise
that is a pure function of (row key, position, vocabulary index), so a game's sample does not depend on which
other games share its batch, on the batch width, on the process that plays it or on the torch RNG. That is what
lets N data-parallel processes playing B/N games each reproduce one process playing all B, a resume on another
number of processes replay the same games, and vLLM-style per-request seeds exist here too. ``argmax(logits / T
+ Gumbel noise)`` is an exact draw from ``softmax(logits / T)``, so scoring is unchanged.

Decoding speed (:class:`DecodingConfig`, ``model.rollout.hf``): a *static* KV cache (preallocated to prompt + new
tokens, fixed shapes) and a *compiled* decoding forward (``torch.compile`` through transformers' ``CompileConfig``;
on a GPU its default mode captures CUDA graphs) are what transformers offers to make ``generate`` fast at 7B scale.
Both keep role switching exact: the bank switches roles by setting plain attributes on the LoRA layers, and
``torch.compile`` guards on those attributes, so a role it has not seen recompiles (once per role) instead of
reusing another role's graph, and adapter weights stepped in place are read as inputs, not baked in
(``tests/test_rollout.py`` checks both against eager decoding). The static cache changes no token; compiled
kernels may round differently from the eager scoring forward, which is why the module refuses ``old_logprobs:
sampler`` with them. Measured figures: ``benchmarks/bench_rollouts.py`` and docs/performance.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import CompileConfig, GenerationConfig, LogitsProcessor, LogitsProcessorList

from abspo.core.errors import ConfigError
from abspo.rl.logprobs import FUSED_HEAD_MODEL_TYPES, check_temperature, head_token_logprobs, token_logprobs

log = logging.getLogger(__name__)


@dataclass
class Generation:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    """Generated tokens up to and including the first end-of-sequence token (kept: stopping is learned)."""
    texts: list[str]
    """Decoded completions without special tokens."""
    sampled_logprobs: list[list[float]] | None = None
    """With ``generate(..., return_logprobs=True)``: log-prob of each completion token under the distribution
    the sampler drew it from (after every logits processor), to check that scoring uses the same one."""


@dataclass
class DecodingConfig:
    """How Hugging Face ``generate`` decodes the rollouts (``model.rollout.hf``; module docstring)."""

    cache: Literal["dynamic", "static"] = "dynamic"
    """KV cache. dynamic: grows by one position per step (no memory held beyond what is used; works under every
    strategy). static: preallocated to the batch's prompt width + new tokens, so every decoding step has the same
    shapes, which is what ``compile`` needs; the same tokens. Meant for GPUs: on a 2-core CPU whole SmolLM2 games
    run 0.96x as fast as with dynamic (docs/performance.md)."""
    compile: bool = False
    """Compile the decoding forward with ``torch.compile`` (needs ``cache: static``). The first batch of each role
    pays the compilation (tens of seconds), and the first new prompt width one more, with dynamic shapes, which
    later widths reuse. Not under FSDP2, and not with ``algorithm.old_logprobs: sampler``."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "reduce-overhead"
    """``torch.compile`` mode (inductor): reduce-overhead captures CUDA graphs on a GPU (transformers' default),
    default does not, max-autotune searches kernels longer."""
    compile_backend: str = "inductor"
    """``torch.compile`` backend (aot_eager: no code generation, for debugging)."""

    def validate(self, key: str = "model.rollout.hf") -> None:
        if self.compile and self.cache != "static":
            raise ConfigError(f"{key}.compile", "compiled decoding needs fixed shapes, which a dynamic cache does not "
                              "have", f"set {key}.cache: static")
        if self.compile:
            from torch._dynamo import list_backends

            backends = list_backends(exclude_tags=())
            if self.compile_backend not in backends:
                raise ConfigError(f"{key}.compile_backend", f"torch.compile has no backend {self.compile_backend!r}",
                                  f"use one of {', '.join(b for b in backends if 'TESTING' not in b)}")

    def apply(self, config: GenerationConfig) -> GenerationConfig:
        """``config`` with this cache and compilation. Compilation is stated either way: transformers compiles a
        static-cache ``generate`` on a GPU by itself unless told not to, and the user should get what they set."""
        config.cache_implementation = "static" if self.cache == "static" else None
        config.disable_compile = not self.compile
        if self.compile:
            mode = self.compile_mode if self.compile_backend == "inductor" else None  # the others take no mode
            config.compile_config = CompileConfig(fullgraph=False, backend=self.compile_backend, mode=mode)
            config.compile_config._compile_all_devices = True  # transformers compiles on accelerators only otherwise
        return config


def sampling_config(model, tokenizer, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                    return_logprobs: bool = False, keyed: bool = False,
                    decoding: DecodingConfig | None = None) -> GenerationConfig:
    """The whole generation config of a call: the special tokens of the model and what the caller asked, and
    nothing else (no top-k, no repetition penalty, no other processor of the model's own config). ``keyed``:
    the draw is made by :class:`KeyedGumbelSampler` on top of greedy decoding. ``decoding``: the cache and
    compilation (default: a dynamic cache, no compilation)."""
    own = _hf_model(model).generation_config
    eos = getattr(own, "eos_token_id", None)
    do_sample = temperature > 0 and not keyed
    # Greedy decoding ignores the sampling fields; leaving them at their defaults keeps generate from warning.
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}
    return (decoding or DecodingConfig()).apply(GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        **sampling,
        repetition_penalty=1.0,
        bos_token_id=getattr(own, "bos_token_id", None),
        eos_token_id=tokenizer.eos_token_id if eos is None else eos,
        pad_token_id=pad_token_id(tokenizer),
        output_scores=return_logprobs,
        return_dict_in_generate=return_logprobs,
    ))


@contextmanager
def only_this_generation_config(model, config: GenerationConfig) -> Iterator[None]:
    """Make ``config`` the model's generation config for the duration: ``generate`` fills every field the call
    leaves at its default from the model's own config, so the call's config must *be* the model's."""
    hf = _hf_model(model)
    saved = hf.generation_config
    hf.generation_config = config
    try:
        yield
    finally:
        hf.generation_config = saved


def _hf_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, m: int) -> Tensor:
    """(x * m) mod 2**32 for int64 ``x`` in [0, 2**32), in two 16-bit halves so no product overflows int64."""
    return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """A bijective 32-bit integer hash (Wellons' lowbias32) of int64 values in [0, 2**32): the noise source of
    keyed sampling, identical on every device and in every batch layout."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_uniform(keys: Tensor, step: int, vocab: int) -> Tensor:
    """[B, vocab] float64 uniforms in (0, 1), a pure function of (key of the row, step, vocabulary index)."""
    row = hash32((hash32(keys & _MASK32) ^ hash32(torch.full_like(keys, step))) & _MASK32)
    col = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    h = hash32(hash32((row.unsqueeze(-1) + col * 0x9E3779B9) & _MASK32) ^ 0x5BD1E995)
    return (h.to(torch.float64) + 0.5) / 2.0**32


class KeyedGumbelSampler(LogitsProcessor):
    """Turns greedy decoding into sampling at ``temperature`` with per-row keys (Gumbel-max):
    ``argmax(logits / T - log(-log(U)))`` with ``U = keyed_uniform(key, step, v)``.

    With ``record``, keeps the log-prob of each picked token under ``softmax(logits / T)`` (for tests)."""

    def __init__(self, keys: list[int], temperature: float, record: bool = False):
        if temperature <= 0:
            raise ValueError(f"keyed sampling needs a positive temperature, got {temperature}")
        self.keys = torch.tensor([k & _MASK32 for k in keys], dtype=torch.int64)
        self.temperature = temperature
        self.start: int | None = None
        self.picked_logprobs: list[Tensor] | None = [] if record else None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        tempered = scores.float() / self.temperature
        gumbel = -torch.log(-torch.log(keyed_uniform(self.keys.to(scores.device), step, scores.shape[-1])))
        perturbed = tempered + gumbel.to(tempered.dtype)
        if self.picked_logprobs is not None:
            picked = perturbed.argmax(-1, keepdim=True)
            self.picked_logprobs.append(tempered.log_softmax(-1).gather(-1, picked).squeeze(-1))
        return perturbed


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, synced_gpus: bool = False, return_logprobs: bool = False,
             keys: list[int] | None = None, decoding: DecodingConfig | None = None) -> Generation:
    """Sample one completion per prompt from ``softmax(logits / temperature)`` (greedy at temperature 0).

    ``keys`` (one int per prompt, temperature > 0, top_p 1): keyed sampling, each row's draw a pure function of
    its key (module docstring). Without keys the torch RNG draws. ``synced_gpus`` must be on under FSDP (every
    rank steps together). ``decoding``: KV cache and compilation (:class:`DecodingConfig`).
    """
    keyed = keys is not None and temperature > 0
    if keyed and (len(keys) != len(prompts) or top_p != 1.0):
        raise ValueError("keyed sampling needs one key per prompt and top_p 1.0")
    enc = left_padded(tokenizer, prompts, _device(model))
    config = sampling_config(model, tokenizer, max_new_tokens, temperature, top_p, return_logprobs and not keyed,
                             keyed, decoding)
    sampler = KeyedGumbelSampler(keys, temperature, record=return_logprobs) if keyed else None
    extra = {"logits_processor": LogitsProcessorList([sampler])} if keyed else {}
    with only_this_generation_config(model, config):
        raw = model.generate(**enc, generation_config=config, synced_gpus=synced_gpus, **extra)
    out = raw.sequences if return_logprobs and not keyed else raw
    width = enc["input_ids"].shape[1]
    eos = _eos_ids(model, tokenizer)
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
    completions = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        completions.append(row[:cut])
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    sampled = None
    if return_logprobs and keyed:
        steps = torch.stack(sampler.picked_logprobs, dim=1)  # [B, new tokens]
        sampled = [steps[i, :len(c)].tolist() for i, c in enumerate(completions)]
    elif return_logprobs:
        steps = torch.stack(raw.scores, dim=1).float().log_softmax(-1)  # [B, new tokens, V], processed
        sampled = [steps[i, torch.arange(len(c)), torch.tensor(c, dtype=torch.long)].tolist() if c else []
                   for i, c in enumerate(completions)]
    return Generation(prompt_ids, completions, texts, sampled)


def pad_token_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token, else 0 (Llama 3
    tokenizers have neither a pad token nor a single eos id; 0 is what Meta's example uses). Padded positions
    are masked, so the choice changes no output."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def left_padded(tokenizer, prompts: list[str], device) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` of ``prompts`` (no special tokens added: chat templates hold them),
    left-padded so that every row continues at the right edge. Padded here, not by the tokenizer: a tokenizer
    shared with another model (a colocated judge) must not be mutated, and its ``padding_side`` not trusted."""
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        if row:
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def generate_greedy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions of rendered ``prompts`` (special tokens stripped), in input order, ``batch_size`` per
    :func:`generate` call: what guard judges and evaluation players decode with.

    Batches are formed from prompts sorted by token count, longest first, so padding stays small and the largest
    batch runs first (an out-of-memory error shows at once, not at the end). Padded positions are masked, so a
    prompt's answer does not depend on the batch it landed in (up to floating-point noise in half precision).
    """
    if batch_size < 1:
        raise ConfigError("batch_size", f"{batch_size} is not a positive integer", "use e.g. 16")
    lengths = [len(row) for row in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]] if prompts else []
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    texts = [""] * len(prompts)
    for lo in range(0, len(order), batch_size):
        chunk = order[lo:lo + batch_size]
        gen = generate(model, tokenizer, [prompts[i] for i in chunk], max_new_tokens, temperature=0.0)
        for i, text in zip(chunk, gen.texts):
            texts[i] = text
        log.info("generated %d/%d", min(lo + batch_size, len(order)), len(order))
    return texts


def _eos_ids(model, tokenizer) -> set[int]:
    ids = _hf_model(model).generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _device(model) -> torch.device:
    return next(model.parameters()).device


@dataclass
class ScoringBatch:
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    completion_mask: Tensor
    """[B, T]: 1 on real completion tokens."""
    completion_ids: Tensor
    """[B, T]: completion tokens, right-padded with 0."""


def build_scoring_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                        device: torch.device | str = "cpu") -> ScoringBatch:
    """Lay out ``[left pad | prompt | completion | right pad]`` so completions start at one column."""
    p = max(len(x) for x in prompt_ids)
    t = max(1, max(len(x) for x in completion_ids))
    b = len(prompt_ids)
    ids = torch.full((b, p + t), pad_id, dtype=torch.long)
    attn = torch.zeros((b, p + t), dtype=torch.long)
    comp = torch.zeros((b, t), dtype=torch.long)
    cmask = torch.zeros((b, t), dtype=torch.long)
    for i, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        ids[i, p - len(prompt):p] = torch.tensor(prompt)
        attn[i, p - len(prompt):p] = 1
        if completion:
            ids[i, p:p + len(completion)] = torch.tensor(completion)
            attn[i, p:p + len(completion)] = 1
            comp[i, :len(completion)] = torch.tensor(completion)
            cmask[i, :len(completion)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ScoringBatch(ids.to(device), attn.to(device), pos.to(device), cmask.to(device), comp.to(device))


def _completion_outputs(model, batch: ScoringBatch) -> Tensor:
    """[B, T, V] logits at the completion positions (position j predicts token j), in the model's dtype; or
    whatever a replaced head returns at those positions (:func:`completion_logprobs`)."""
    t = batch.completion_ids.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=t + 1, use_cache=False)
    return out.logits[:, :-1, :]


def completion_logits(model, batch: ScoringBatch, temperature: float = 1.0) -> Tensor:
    """[B, T, V] float32 logits / temperature at the completion positions (position j predicts token j): the
    distribution ``generate`` samples from at that temperature, before its softmax. (Materialises the whole
    float32 tensor: for analysis; the update uses :func:`completion_logprobs`.)"""
    check_temperature(temperature)
    logits = _completion_outputs(model, batch).float()
    return logits / temperature if temperature != 1.0 else logits


def fused_head(model) -> nn.Linear | None:
    """The LM head that :func:`completion_logprobs` can compute log-probs in: a plain ``nn.Linear`` (not one
    with a LoRA adapter) of a :data:`FUSED_HEAD_MODEL_TYPES` architecture; None for any other model."""
    hf = _hf_model(model)
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    # transformers' own forward (remote code may declare a listed model_type and still post-process its logits;
    # FSDP2's wrapper class keeps the forward it wraps)
    forward_module = getattr(type(hf).forward, "__module__", "")
    if model_type not in FUSED_HEAD_MODEL_TYPES or not forward_module.startswith(f"transformers.models.{model_type}."):
        return None
    head = hf.get_output_embeddings()
    return head if type(head) is nn.Linear else None


@contextmanager
def _head_computes(head: nn.Linear, forward) -> Iterator[None]:
    """``head`` runs ``forward`` instead of its own for the duration; its hooks (FSDP2's) still run around it.
    A ``forward`` already set on the instance (accelerate's hooks set one) is put back after."""
    missing = object()
    before = head.__dict__.get("forward", missing)
    head.forward = forward
    try:
        yield
    finally:
        if before is missing:
            del head.forward
        else:
            head.forward = before


def completion_logprobs(model, batch: ScoringBatch, with_entropy: bool = False, temperature: float = 1.0,
                        fused: bool | None = None) -> tuple[Tensor, Tensor | None]:
    """Per-token log pi_T(completion token) [B, T] (float32, 0 past each completion) under ``softmax(logits /
    temperature)``, the distribution ``generate`` samples from at that temperature; optionally the per-token
    entropy of it (0 past each completion too).

    Where the model has a :func:`fused_head` (``fused=None``, the default; ``False`` forces the plain path), the
    head itself computes the log-probs of the real completion tokens from its input
    (:func:`abspo.rl.logprobs.head_token_logprobs`), so neither the [B, T, V] logits nor their gradient exist, and
    padding rows cost nothing. It runs inside the model's own forward, so FSDP2's hooks on the model see the
    result as its output, and gradients reach a trained (or tied) head's weight as they would through the
    ``nn.Linear``. Otherwise the log-probs come from the logits (:func:`abspo.rl.logprobs.token_logprobs`)."""
    check_temperature(temperature)
    head = fused_head(model) if fused is not False else None
    mask = batch.completion_mask
    if head is None:
        logp, entropy = token_logprobs(_completion_outputs(model, batch), batch.completion_ids, temperature,
                                       with_entropy)
        return logp * mask, (entropy * mask if with_entropy else None)
    b, t = mask.shape
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    if rows.numel() == 0:  # score one (masked) row anyway, so that a backward still runs through the model
        rows = rows.new_zeros(1)

    def scores(hidden: Tensor) -> Tensor:  # [B, T + 1, H]: the head's input at the completion positions
        h = hidden[:, :-1].reshape(b * t, hidden.shape[-1]).index_select(0, rows)
        tokens = batch.completion_ids.reshape(-1).index_select(0, rows)
        logp, entropy = head_token_logprobs(h, head, tokens, temperature, with_entropy)
        out = torch.zeros(b * t, 2, dtype=torch.float32, device=hidden.device)
        out = out.index_put((rows,), torch.stack([logp, entropy], -1)).view(b, t, 2)
        return torch.nn.functional.pad(out, (0, 0, 0, 1))  # the last position predicts nothing; dropped below

    with _head_computes(head, scores):
        out = _completion_outputs(model, batch) * mask.unsqueeze(-1)
    return out[..., 0], (out[..., 1] if with_entropy else None)
