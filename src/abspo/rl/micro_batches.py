"""How a batch of turns is cut into micro-batches for the scoring and gradient passes.

A micro-batch's forward pads every row to its longest prompt *plus* its longest completion, and what a gradient
pass holds (the activations saved for backward) grows with those padded tokens, not with the tokens played. So:

- rows are sorted by length, longest first, so that a micro-batch holds rows of similar length and pads little;
- a micro-batch holds one role's rows (an adapter that plays several roles would otherwise pad a defender's long
  prompt next to an attacker's long rewrite, and pay for both);
- a micro-batch holds at most ``max_rows`` rows and, with ``max_tokens``, at most that many padded tokens (as
  verl's dynamic batch size does): turns of very different lengths then run as few wide micro-batches of short
  rows and narrow ones of long rows, and the memory of a pass is bounded by ``max_tokens`` whatever the lengths;
- the largest micro-batch runs first, so that an out-of-memory shows at once, not an hour into a run.

The loss of the gradient pass weights each micro-batch by its share of the batch's completion tokens, so how the
rows are cut changes no gradient (``tests/test_module.py``), only memory and speed.
"""

from __future__ import annotations

from collections.abc import Sequence


def padded_tokens(rows: Sequence[int], prompt_lengths: Sequence[int], completion_lengths: Sequence[int]) -> int:
    """Tokens of the padded [rows, longest prompt + longest completion] batch that ``rows`` score as."""
    if not rows:
        return 0
    return len(rows) * (max(prompt_lengths[i] for i in rows) + max(completion_lengths[i] for i in rows))


def micro_batches(prompt_lengths: Sequence[int], completion_lengths: Sequence[int], roles: Sequence | None = None,
                  max_rows: int = 8, max_tokens: int | None = None) -> list[list[int]]:
    """The row indices of each micro-batch (module docstring): per role (``roles[i]`` of row i; None: one role),
    rows longest first, a new micro-batch whenever the next row would exceed ``max_rows`` rows or ``max_tokens``
    padded tokens; largest micro-batch first. A row longer than ``max_tokens`` on its own runs alone."""
    roles = list(roles) if roles is not None else [None] * len(prompt_lengths)
    if not len(roles) == len(prompt_lengths) == len(completion_lengths):
        raise ValueError(f"{len(prompt_lengths)} prompts, {len(completion_lengths)} completions and {len(roles)} "
                         "roles: one of each per row")
    length = [p + c for p, c in zip(prompt_lengths, completion_lengths)]
    chunks: list[list[int]] = []
    for role in dict.fromkeys(roles):
        current: list[int] = []
        for i in sorted((i for i in range(len(roles)) if roles[i] == role), key=lambda i: -length[i]):
            grown = current + [i]
            if current and (len(grown) > max_rows or (
                    max_tokens is not None and padded_tokens(grown, prompt_lengths, completion_lengths) > max_tokens)):
                chunks.append(current)
                grown = [i]
            current = grown
        if current:
            chunks.append(current)
    return sorted(chunks, key=lambda rows: -padded_tokens(rows, prompt_lengths, completion_lengths))
