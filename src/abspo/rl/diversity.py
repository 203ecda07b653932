"""How varied a set of texts is: self-BLEU and mean pairwise cosine of embeddings (pure functions).

Collapse in self-play shows first in the attacker's prompts: it finds one rewrite that works and repeats it.
Two standard measures catch that, one lexical and one semantic:

* **Self-BLEU** (Zhu et al. 2018, Texygen): each text scored by BLEU-4 against all the others as references,
  averaged. 1.0 means every prompt is a copy of another; varied prompts score low. BLEU here is the standard
  corpus-free sentence BLEU (clipped n-gram precisions up to 4, geometric mean, brevity penalty against the
  closest reference length) with Chen & Cherry's smoothing 1 (a zero precision counts as 0.1 / total), the
  default of common self-BLEU scripts, so short texts do not all score 0.
* **Mean pairwise cosine** of sentence embeddings: near 1 when the prompts say the same thing in other words.

Tokens are lower-cased word and punctuation runs: simple, deterministic and independent of any model's tokenizer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch

SMOOTHING_EPSILON = 0.1
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Sentence BLEU of ``hypothesis`` (tokens) against ``references`` (token lists), smoothing 1."""
    if not hypothesis or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp = ngrams(hypothesis, n)
        best: Counter = Counter()
        for ref in references:
            best |= ngrams(ref, n)
        clipped = sum(min(count, best[g]) for g, count in hyp.items())
        if n == 1 and clipped == 0:
            return 0.0  # no word in common: no smoothing makes that a match
        # A hypothesis shorter than n has no n-grams: 0 matches out of (at least) 1, smoothed like any zero.
        log_precision += math.log((clipped or SMOOTHING_EPSILON) / max(1, sum(hyp.values())))
    h = len(hypothesis)
    closest = min((abs(len(r) - h), len(r)) for r in references)[1]
    brevity = 1.0 if h > closest else math.exp(1 - closest / h)
    return brevity * math.exp(log_precision / max_n)


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float | None:
    """Mean BLEU of each text against all the others; None for fewer than two texts."""
    toks = [tokens(t) for t in texts]
    if len(toks) < 2:
        return None
    return sum(bleu(t, toks[:i] + toks[i + 1:], max_n) for i, t in enumerate(toks)) / len(toks)


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float | None:
    """Mean cosine similarity over distinct pairs of rows; None for fewer than two rows."""
    n = embeddings.shape[0]
    if n < 2:
        return None
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    sims = unit @ unit.T
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Mean cosine similarity of row i of ``a`` with row i of ``b``; None when empty."""
    if a.shape[0] == 0:
        return None
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())
