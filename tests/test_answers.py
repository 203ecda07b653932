"""Final-number extraction on tricky answers, with hand-written expectations (pure functions, no model)."""

from __future__ import annotations

import json

import pytest

from abspo.evaluation.answers import extract_answer, is_correct, normalise, parse_number, same_number


@pytest.mark.parametrize("text, expected", [
    # the markers, and their order of preference
    ("Kim raises 750 dollars.\n#### 2280", 2280),
    ("#### 5\nThe answer is 6.", 5),                                    # '####' beats 'the answer is'
    ("So the answer is 18. Check: 9 + 9 = 18, and 18 - 2 = 16.", 18),  # 'the answer is' beats the last number
    ("The answer is \\boxed{12}. Later I said 13.", 12),
    ("We get \\boxed{42}, so 42 - 1 = 41 remain.", 42),                   # boxed beats the last number
    ("First \\boxed{3}, then corrected: \\boxed{4}", 4),                  # last boxed
    ("Answer: 7 apples, because 3 + 4 = 7.\n Then 8 more.", 7),
    ("**Answer:** 19", 19),
    ("The final answer is 40.\nThe answer is 30 + 10 = 40.", 40),      # an equation: the value after its last '='
    ("The answer is 5. Because 2 + 2 = 4, not 5.", 5),                  # ... but only within the marker's sentence
    ("Answer: 5 + 3 = 8", 8),
    ("#### 5 + 3 = 8", 5),                                              # '####' is followed by the number itself
    ("The final answer is: $\\boxed{\\$12.50}$", 12.5),
    ("The answer is below.\n10 + 5 = 15", 15),                            # a marker without a number is skipped
    ("I think the answer is\n\n 9", 9),                                   # ... and so is one whose line has none
    # number spellings
    ("She earns $1,234 per month.", 1234),
    ("Total: 1,234,567.89", 1234567.89),
    ("It costs $5.", 5),
    ("It grew by 25%.", 25),
    ("The temperature is -7 degrees.", -7),
    ("He owes −15 dollars", -15),                                         # Unicode minus
    ("He lost -$20", -20),
    ("It weighs .5 kg", 0.5),
    ("It takes 3.5 hours.", 3.5),
    ("The trip is 120km long", 120),                                      # a unit glued to the number
    ("10-4=6", 6),
    ("10 - 4", 4),                                                        # a spaced minus is an operator
    ("Version v2 of H2O", None),                                          # digits inside words are not numbers
    ("The list 1,2,3", 3),                                                # not a thousands group
    ("The answer is $1{,}234$.", 1234),
    ("\\boxed{1\\,000}", 1000),
    ("\\boxed{\\frac{3}{4}}", 0.75),
    ("The answer is \\dfrac{10}{2} cookies", 5),
    ("The answer is \\text{42 apples}", 42),
    ("\\boxed{-3}", -3),
    ("The answer is 1/2", 1),                                             # plain fractions: documented as unsupported
    ("no digits at all", None),
    ("", None),
])
def test_extract_answer(text, expected):
    got = extract_answer(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize("text, expected", [
    ("2280", 2280), ("3.5", 3.5), ("$1,000", 1000), ("-12", -12), ("3.50", 3.5), (".25", 0.25), ("x", None),
])
def test_parse_number_reads_the_first_number(text, expected):
    assert parse_number(text) == (None if expected is None else pytest.approx(expected))


def test_same_number_compares_numerically():
    assert same_number(3.50, 3.5) and same_number(12, 12.0) and same_number(0.1 + 0.2, 0.3)
    assert not same_number(12, 12.5) and not same_number(None, 1.0) and not same_number(1.0, None)
    assert not same_number(float("nan"), float("nan"))


@pytest.mark.parametrize("output, target, ok", [
    ("5 + 7 = 12.", "12", True),
    ("The answer is 12.0", "12", True),
    ("The answer is 3.50 hours.", "3.5", True),
    ("#### 1,000", "1000", True),
    ("12 + 1 = 13", "12", False),
    ("I cannot help with that.", "12", False),
])
def test_is_correct(output, target, ok):
    assert is_correct(output, target) is ok


def test_normalise_rewrites_latex_numbers():
    assert normalise("\\$1{,}234 and 5\\% and \\frac{1}{4}") == "$1,234 and 5% and 0.25"


def test_every_gsm8k_reference_solution_scores_its_own_final():
    """The data kit's worked solutions end on '#### N': the parser must recover N from every one of them."""
    with open("data/eval/gsm8k.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    assert len(rows) > 100
    wrong = [r["source"] for r in rows if not is_correct(r["answer"], r["final"])]
    assert not wrong
