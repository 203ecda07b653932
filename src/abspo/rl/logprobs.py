"""Token log-probabilities and entropies under ``softmax(logits / T)``, without the whole float32 [N, V] tensor.

The plain formula (``logits.float() / T``, ``logsumexp``, ``gather``) keeps float32 [N, V] tensors alive for
backward; at Qwen2.5's 152k vocabulary one micro-batch's are several GB. Both functions here work through the
rows in chunks, keep only a float32 log-normaliser per row for backward, and recompute each chunk's softmax
there: ``d logp / d logits = (onehot(token) - softmax) / T``. The entropy comes from the same chunks and carries
no gradient.

* :class:`TokenLogprobs` starts from the model's logits (any architecture): the logits themselves stay alive.
* :class:`HeadTokenLogprobs` starts from the LM head's *input*: it computes each chunk's logits from the hidden
  states and the head's weight, in forward and again in backward, so the [N, V] logits never exist at once. That
  costs one more head matmul per gradient pass and saves the logits and their gradient (at SmolLM2 size, 8 turns
  of 65 tokens: 2 x 100 MB; with Qwen2.5's vocabulary and bf16, 2 x 300 MB per 1,000 tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

FUSED_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Architectures (``config.model_type``) whose causal-LM forward ends in ``logits = lm_head(hidden)`` with
nothing after it: no soft-capping (Gemma 2), logit scale (Cohere) or logits scaling (Granite); read in the
modeling files of transformers 5. Their scoring computes log-probs inside the head
(:func:`abspo.rl.rollout.completion_logprobs`); any other architecture scores from the logits its forward returns."""

ROWS_PER_CHUNK = 256
"""Positions whose float32 vocabulary row exists at once in :class:`TokenLogprobs` (256 x 152k x 4 B = 156 MB at
Qwen2.5's vocabulary, where the whole [B, T, V] float32 tensor of one micro-batch is several GB)."""

HEAD_CHUNK_ELEMENTS = 1 << 22
"""Logit entries (rows x vocabulary) that :class:`HeadTokenLogprobs` computes at once: 16 MB in float32, i.e.
85 rows at SmolLM2's 49k vocabulary and 27 at Qwen2.5's 152k. A chunk's transients (logits, log-softmax,
softmax) are about three times that."""


def head_chunk_rows(vocab: int) -> int:
    """Rows per chunk of :class:`HeadTokenLogprobs` for a vocabulary of ``vocab`` entries."""
    return max(1, HEAD_CHUNK_ELEMENTS // vocab)


def _chunk_forward(x: Tensor, tokens: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(log-prob of ``tokens``, entropy (0 without ``with_entropy``: it costs a softmax), log-normaliser) [c] of
    float32 tempered logits ``x`` [c, V]."""
    lse = torch.logsumexp(x, dim=-1)
    logp = x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logp, torch.zeros_like(lse), lse
    entropy = lse - torch.einsum("cv,cv->c", torch.softmax(x, dim=-1), x)  # no [c, V] product
    return logp, entropy, lse


def _chunk_logit_grad(x: Tensor, lse: Tensor, tokens: Tensor, grad_logp: Tensor, temperature: float) -> Tensor:
    """d loss / d logits [c, V] (float32) of a chunk, from its tempered logits ``x`` and log-normaliser ``lse``:
    ``(onehot(token) - softmax(x)) * grad_logp / T``."""
    g = grad_logp.float().unsqueeze(-1) / temperature
    grad = (x - lse.unsqueeze(-1)).exp_().mul_(-g)
    return grad.scatter_add_(-1, tokens.unsqueeze(-1), g)


class TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / T)[token] and the entropy of softmax(logits / T) per row of ``logits`` [N, V]; saves
    only the logits (which the model's output holds anyway) and the float32 log-normaliser [N]."""

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, temperature: float, with_entropy: bool = True):
        n = logits.shape[0]
        logp, entropy, lse = (torch.empty(n, dtype=torch.float32, device=logits.device) for _ in range(3))
        for lo in range(0, n, ROWS_PER_CHUNK):
            rows = slice(lo, lo + ROWS_PER_CHUNK)
            x = logits[rows].float() / temperature
            logp[rows], entropy[rows], lse[rows] = _chunk_forward(x, tokens[rows], with_entropy)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp: Tensor, _grad_entropy: Tensor):
        logits, tokens, lse = ctx.saved_tensors
        t = ctx.temperature
        grad = torch.empty_like(logits)
        for lo in range(0, logits.shape[0], ROWS_PER_CHUNK):
            rows = slice(lo, lo + ROWS_PER_CHUNK)
            x = logits[rows].float() / t
            grad[rows] = _chunk_logit_grad(x, lse[rows], tokens[rows], grad_logp[rows], t).to(grad.dtype)
        return grad, None, None, None


def _tempered_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, compute_dtype: torch.dtype,
                     temperature: float) -> Tensor:
    """float32 ``(hidden @ weight.T + bias) / T`` for a chunk, the matmul in ``compute_dtype`` (as the head's own
    ``nn.Linear`` would compute it, under autocast or not)."""
    return F.linear(hidden.to(compute_dtype), weight, bias).float().div_(temperature)


class HeadTokenLogprobs(torch.autograd.Function):
    """log softmax(head(hidden) / T)[token] and its entropy per row of ``hidden`` [N, H], for a linear head
    (``weight`` [V, H], ``bias`` [V] or None), computed in chunks of :func:`head_chunk_rows` rows: saves the
    hidden states and the float32 log-normaliser [N], never the logits. Gradients flow to ``hidden`` and, where
    they require it, to ``weight`` and ``bias`` (a trained, e.g. tied, head); the matmuls run in
    ``compute_dtype`` (the autocast dtype, or the model's)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, tokens: Tensor, temperature: float,
                compute_dtype: torch.dtype, with_entropy: bool = True):
        n, step = hidden.shape[0], head_chunk_rows(weight.shape[0])
        w, b = weight.to(compute_dtype), None if bias is None else bias.to(compute_dtype)
        logp, entropy, lse = (torch.empty(n, dtype=torch.float32, device=hidden.device) for _ in range(3))
        for lo in range(0, n, step):
            rows = slice(lo, lo + step)
            x = _tempered_logits(hidden[rows], w, b, compute_dtype, temperature)
            logp[rows], entropy[rows], lse[rows] = _chunk_forward(x, tokens[rows], with_entropy)
        ctx.save_for_backward(hidden, weight, bias, tokens, lse)
        ctx.temperature, ctx.compute_dtype = temperature, compute_dtype
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp: Tensor, _grad_entropy: Tensor):
        hidden, weight, bias, tokens, lse = ctx.saved_tensors
        t, cd = ctx.temperature, ctx.compute_dtype
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        w, b = weight.to(cd), None if bias is None else bias.to(cd)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # float32 accumulators across chunks, cast to the parameters' dtype at the end
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        step = head_chunk_rows(weight.shape[0])
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit here
            for lo in range(0, hidden.shape[0], step):
                rows = slice(lo, lo + step)
                h = hidden[rows].to(cd)
                x = _tempered_logits(h, w, b, cd, t)
                grad = _chunk_logit_grad(x, lse[rows], tokens[rows], grad_logp[rows], t)  # float32
                if need_hidden:
                    grad_hidden[rows] = (grad.to(cd) @ w).to(hidden.dtype)
                if need_weight:  # in place: no second [V, H] tensor beside the accumulator
                    grad_weight.addmm_(grad.t(), h.float())
                if need_bias:
                    grad_bias += grad.sum(0)
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None, None, None)


def check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"scoring needs a positive temperature, got {temperature} (greedy decoding has no log-probs)")


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0,
                   with_entropy: bool = True) -> tuple[Tensor, Tensor]:
    """(log-prob of ``tokens``, entropy (0 without ``with_entropy``)) [...] under ``softmax(logits / temperature)``
    for logits [..., V], in float32 (:class:`TokenLogprobs`)."""
    check_temperature(temperature)
    shape = tokens.shape
    logp, entropy = TokenLogprobs.apply(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), temperature,
                                        with_entropy)
    return logp.view(shape), entropy.view(shape)


def head_token_logprobs(hidden: Tensor, head: torch.nn.Linear, tokens: Tensor, temperature: float = 1.0,
                        with_entropy: bool = True) -> tuple[Tensor, Tensor]:
    """(log-prob of ``tokens``, entropy (0 without ``with_entropy``)) [...] under ``softmax(head(hidden) / temperature)`` for hidden states
    [..., H], in float32, without the logits (:class:`HeadTokenLogprobs`). The matmul runs in the autocast dtype
    where autocast is on (as ``head(hidden)`` would), else in the hidden states' dtype."""
    check_temperature(temperature)
    device = hidden.device.type
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    shape = tokens.shape
    logp, entropy = HeadTokenLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias,
                                            tokens.reshape(-1), temperature, compute, with_entropy)
    return logp.view(shape), entropy.view(shape)
