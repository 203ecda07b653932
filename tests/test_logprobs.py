"""The chunked token log-probs (abspo.rl.logprobs) against the plain formula, in value, entropy and gradient, from
logits and from the LM head's input, whatever the chunking, dtype, temperature and shape."""

from __future__ import annotations

import pytest
import torch

from abspo.rl import logprobs


def plain(logits: torch.Tensor, tokens: torch.Tensor, temperature: float):
    x = logits.float() / temperature
    logp = x.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(x.softmax(-1) * x.log_softmax(-1)).sum(-1)
    return logp, entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 9)])
def test_token_logprobs_match_the_plain_formula_in_value_entropy_and_gradient(monkeypatch, dtype, temperature, shape):
    """The chunked log-softmax equals ``log_softmax(logits.float() / T)[token]`` with its gradient, whatever the
    chunking (a chunk size that does not divide the rows, and one larger than them)."""
    vocab = 37
    torch.manual_seed(sum(shape))
    raw = (torch.randn(*shape, vocab) * 4).to(dtype)
    tokens = torch.randint(0, vocab, shape)
    weights = torch.randn(shape)  # a loss that weighs positions differently, so the gradient is not symmetric
    plain_in = raw.clone().requires_grad_(True)
    plain_logp, plain_entropy = plain(plain_in, tokens, temperature)
    (plain_logp * weights).sum().backward()
    for chunk in (2, 1000):
        monkeypatch.setattr(logprobs, "ROWS_PER_CHUNK", chunk)
        mine_in = raw.clone().requires_grad_(True)
        logp, entropy = logprobs.token_logprobs(mine_in, tokens, temperature)
        (logp * weights).sum().backward()
        assert logp.dtype == torch.float32 and logp.shape == shape
        torch.testing.assert_close(logp, plain_logp.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy, plain_entropy.detach(), atol=1e-4, rtol=1e-5)
        tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: the gradient is rounded to the logits' dtype
        torch.testing.assert_close(mine_in.grad.float(), plain_in.grad.float(), atol=tol, rtol=tol)


def test_head_chunk_rows_keep_a_chunk_near_its_element_budget():
    assert logprobs.head_chunk_rows(49_152) == 85  # SmolLM2
    assert logprobs.head_chunk_rows(151_936) == 27  # Qwen2.5
    assert logprobs.head_chunk_rows(10 ** 9) == 1, "at least one row"


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("trained_head", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("rows", [1, 7, 13])
def test_head_token_logprobs_equal_the_plain_head_in_value_entropy_and_every_gradient(monkeypatch, bias, trained_head,
                                                                                      temperature, rows):
    """From the head's input: the same log-probs and entropies as ``log_softmax(head(h) / T)``, and the same
    gradients to the hidden states and (when trained) to the head's weight and bias, with chunks of 3 rows (which
    do not divide 7 or 13) and of 1,000."""
    vocab, width = 41, 16
    torch.manual_seed(rows)
    head = torch.nn.Linear(width, vocab, bias=bias)
    head.requires_grad_(trained_head)
    with torch.no_grad():
        head.weight.mul_(8)  # peaked distributions, where a wrong normaliser shows
    hidden = torch.randn(rows, width)
    tokens = torch.randint(0, vocab, (rows,))
    weights = torch.randn(rows)

    def grads(fn):
        h = hidden.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        logp, entropy = fn(h)
        (logp * weights).sum().backward()
        out = {"logp": logp.detach(), "entropy": entropy.detach(), "hidden": h.grad}
        if trained_head:
            out["weight"] = head.weight.grad
            if bias:
                out["bias"] = head.bias.grad
        return out

    expected = grads(lambda h: plain(head(h), tokens, temperature))
    for chunk_elements in (3 * vocab, 1000 * vocab):
        monkeypatch.setattr(logprobs, "HEAD_CHUNK_ELEMENTS", chunk_elements)
        got = grads(lambda h: logprobs.head_token_logprobs(h, head, tokens, temperature))
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-5, msg=name)


def test_head_token_logprobs_under_bf16_autocast_match_the_head_under_autocast():
    """Under autocast the head's matmul runs in bf16, as ``nn.Linear`` does there; the log-softmax in float32."""
    vocab, width = 53, 32
    torch.manual_seed(0)
    head = torch.nn.Linear(width, vocab, bias=False)
    hidden = torch.randn(2, 5, width, requires_grad=True)
    tokens = torch.randint(0, vocab, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = plain(head(hidden), tokens, 1.0)
        got, _ = logprobs.head_token_logprobs(hidden, head, tokens)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # the same bf16 logits, float32 reductions
    assert got.shape == (2, 5)
    (g_expected,) = torch.autograd.grad(expected.sum(), hidden)
    (g_got,) = torch.autograd.grad(got.sum(), hidden)
    torch.testing.assert_close(g_got, g_expected, atol=1e-2, rtol=1e-2)  # both rounded through bf16
    float32, _ = plain(head(hidden), tokens, 1.0)
    assert (got - float32).abs().max() > 1e-4, "the matmul really ran in bf16"


def test_scoring_refuses_greedy_temperature():
    with pytest.raises(ValueError, match="positive temperature"):
        logprobs.head_token_logprobs(torch.zeros(1, 4), torch.nn.Linear(4, 3), torch.zeros(1, dtype=torch.long), 0.0)
