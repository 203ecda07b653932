"""Batched generation and sequence log-probabilities with Hugging Face models.

Generation left-pads prompts so every row continues at the right edge. For scoring, each sample becomes
``[left pad | prompt | completion | right pad]``: prompts end at one column, so the completion logits are
one contiguous slice and the LM head runs only on it (``logits_to_keep``), which matters with 50k-150k
token vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Generation:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    """Generated tokens up to and including the first end-of-sequence token (kept: stopping is learned)."""
    texts: list[str]
    """Decoded completions without special tokens."""


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, synced_gpus: bool = False) -> Generation:
    """Sample one completion per prompt. ``synced_gpus`` must be on under FSDP (every rank steps together)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(_device(model))
    do_sample = temperature > 0
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=0 if do_sample else None,
        pad_token_id=tokenizer.pad_token_id,
        synced_gpus=synced_gpus,
    )
    width = enc["input_ids"].shape[1]
    eos = _eos_ids(model, tokenizer)
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
    completions = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        completions.append(row[:cut])
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Generation(prompt_ids, completions, texts)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
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


def completion_logprobs(model, batch: ScoringBatch, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Per-token log pi(completion token) [B, T] (float32), and optionally the per-token entropy."""
    t = batch.completion_ids.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=t + 1, use_cache=False)
    logits = out.logits[:, :-1, :].float()  # position j predicts completion token j
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            entropy = lse - (probs * logits).sum(-1)
    return logp * batch.completion_mask, entropy
