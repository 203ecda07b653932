"""How a batch of turns is cut into micro-batches: by hand on small cases, and over random lengths the invariants
every cut must keep (each row once, one role per micro-batch, within both caps unless a row is alone)."""

from __future__ import annotations

import random

import pytest

from abspo.rl.micro_batches import micro_batches, padded_tokens


def test_padded_tokens_by_hand():
    prompts, completions = [10, 4, 7], [2, 9, 1]
    assert padded_tokens([0, 1], prompts, completions) == 2 * (10 + 9), "longest prompt plus longest completion"
    assert padded_tokens([2], prompts, completions) == 8
    assert padded_tokens([], prompts, completions) == 0


def test_a_token_cap_splits_long_rows_and_keeps_short_ones_together():
    # lengths (prompt + completion): 40, 38, 12, 11, 10, 9 -> rows 0..5 already longest first
    prompts, completions = [30, 30, 8, 8, 8, 8], [10, 8, 4, 3, 2, 1]
    assert micro_batches(prompts, completions, max_rows=4) == [[0, 1, 2, 3], [4, 5]]
    # cap 80: [0, 1] pads to 2 x 40 = 80; adding row 2 would be 3 x 40; the short rows pad to 12 each
    assert micro_batches(prompts, completions, max_rows=4, max_tokens=80) == [[0, 1], [2, 3, 4, 5]]
    # cap 39: row 0 alone is over it and runs alone; row 1 (38) too; short rows 3 at a time (3 x 12 = 36)
    assert micro_batches(prompts, completions, max_rows=4, max_tokens=39) == [[0], [1], [2, 3, 4], [5]]


def test_roles_never_share_a_micro_batch_and_the_largest_runs_first():
    prompts, completions = [30, 10, 28, 8, 20, 9], [2, 25, 1, 24, 3, 2]
    roles = ["defender", "attacker", "defender", "attacker", "defender", "attacker"]
    assert micro_batches(prompts, completions, roles, max_rows=2) == [[1, 3], [0, 2], [4], [5]]
    # with a cap of 40 tokens the attacker's long rewrites (35, 32) run alone, the defender's (32, 29) too
    assert micro_batches(prompts, completions, roles, max_rows=2, max_tokens=40) == [[1], [0], [3], [2], [4], [5]]


@pytest.mark.parametrize("seed", range(20))
def test_every_cut_keeps_its_invariants(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    prompts = [rng.randint(1, 300) for _ in range(n)]
    completions = [rng.randint(1, 200) for _ in range(n)]
    roles = [rng.choice(["attacker", "defender", "judge"]) for _ in range(n)]
    max_rows, max_tokens = rng.randint(1, 9), rng.choice([None, rng.randint(50, 2000)])
    chunks = micro_batches(prompts, completions, roles, max_rows, max_tokens)
    assert sorted(i for c in chunks for i in c) == list(range(n)), "each row in exactly one micro-batch"
    sizes = [padded_tokens(c, prompts, completions) for c in chunks]
    assert sizes == sorted(sizes, reverse=True), "largest first"
    for c in chunks:
        assert len({roles[i] for i in c}) == 1 and 1 <= len(c) <= max_rows
        assert max_tokens is None or len(c) == 1 or padded_tokens(c, prompts, completions) <= max_tokens
    # greedy: a role's rows, longest first, run in consecutive micro-batches, and each micro-batch stopped only
    # where the next row would have broken a cap
    for role in set(roles):
        order = sorted((i for i in range(n) if roles[i] == role), key=lambda i: -(prompts[i] + completions[i]))
        mine = sorted((c for c in chunks if roles[c[0]] == role), key=lambda c: order.index(c[0]))
        assert [i for c in mine for i in c] == order
        for c, following in zip(mine, mine[1:]):
            grown = c + following[:1]
            assert len(grown) > max_rows or (max_tokens is not None
                                             and padded_tokens(grown, prompts, completions) > max_tokens)


def test_rows_without_a_role_each_are_refused():
    with pytest.raises(ValueError, match="3 prompts, 3 completions and 2 roles"):
        micro_batches([1, 2, 3], [1, 1, 1], ["attacker", "defender"])
