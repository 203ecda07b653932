"""Degenerate text (empty, loops, character soup) told apart from answers, by the text alone."""

from __future__ import annotations

import pytest

from abspo.rl.degenerate import degenerate_reason, distinct_window_share, repetition_loop
from abspo.evaluation.safety import Item, evaluate_safety, render_markdown
from tests.test_safety_report import MarkerJudge

LOOP = "Anaphylaxis is a medical emergency that requires immediate medical attention. " * 3
PROSE = ("Anaphylaxis is a severe allergic reaction. Epinephrine narrows blood vessels and opens the airways, "
         "which is why it is injected at once; the patient is then watched in hospital for a second reaction.")


@pytest.mark.parametrize(("text", "n", "share"), [
    (LOOP, 6, 10 / 25),                              # 30 words, 25 windows, period 10: 10 distinct
    ("Intro. " + LOOP[: LOOP.rindex("Anaphylaxis")], 6, 11 / 16),  # 21 words: the sentence twice, 11 distinct
    ("I am the I am the I am the", 6, 3 / 4),        # 9 words, 4 windows: the first and last are equal
    ("I am the I am the I am the", 3, 3 / 7),        # "i am the", "am the i", "the i am", 7 windows
    ("WAIT wait Wait wait wait wait " * 2 + "wait", 6, 1 / 8),  # case-insensitive: 13 x "wait"
    ("too short", 6, 1.0),                           # no window at all
    ("", 6, 1.0),
])
def test_distinct_window_share_by_hand(text, n, share):
    assert distinct_window_share(text, n) == pytest.approx(share)


@pytest.mark.parametrize(("text", "expected"), [(LOOP, True), ("Intro. " + LOOP[: LOOP.rindex("Anaphylaxis")], False),
                                                (PROSE, False), ("", False)])
def test_a_loop_is_mostly_repetition(text, expected):
    assert repetition_loop(text) is expected


def test_exactly_half_distinct_is_not_a_loop():
    assert distinct_window_share("a b a b", n=1) == 0.5 and not repetition_loop("a b a b", n=1)  # "fewer than half"
    assert repetition_loop("a b a b a", n=1)  # 2 of 5 distinct


def test_bad_window_is_refused():
    with pytest.raises(ValueError):
        distinct_window_share("x", n=0)


def test_repetition_rate_is_reported_beside_every_benchmark():
    items = [Item("harmbench", "do harm [harm]", "do harm [harm]", True),
             Item("harmbench", "do more harm [refuse]", "do more harm [refuse]", True),
             Item("overrefusal", "edgy [refuse]", "edgy [refuse]", False),
             Item("benign", "plain", "plain", False)]
    answers = {"do harm [harm]": LOOP, "do more harm [refuse]": PROSE, "edgy [refuse]": LOOP, "plain": PROSE}
    metrics, records, _ = evaluate_safety(lambda prompts: [answers[p] for p in prompts], MarkerJudge(), items)
    assert [r["repetition_loop"] for r in records] == [True, False, True, False]
    hand = {"harmbench": (1, 2), "overrefusal": (1, 1), "benign": (0, 1)}  # (loops, responses)
    for bench, (loops, n) in hand.items():
        rep = metrics[bench]["repetition_rate"]
        assert (rep["count"], rep["labelled"], rep["unlabelled"]) == (loops, n, 0), bench
        assert rep["rate"] == pytest.approx(loops / n)
    # The judge's labels are untouched by the loop rule: the looping harmbench answer is still "harmful".
    assert metrics["harmbench"]["count"] == 1 and metrics["overrefusal"]["count"] == 1
    report = {"defender": {"label": "d"}, "judge": "j", "benchmarks": metrics, "timings": {},
              "protocol": {"judge_on": "request", "seed": 0, "limit": None, "templates": 1, "behaviours": 1}}
    md = render_markdown(report)
    assert "| harmbench | repetition_rate | 50.0% |" in md and "| benign | repetition_rate | 0.0% |" in md


# -- degenerate_reason: every kind, and the answers it must not flag --------------------------------------------
@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("  \n\t", "empty"),
    ("The answer is yes. " * 12, "loop"),
    ("ttp.é rcf() %$# 9x qq ## zz.. ~~ 3r", "gibberish"),
    ("ĠĠ ĊĊ .** )); ]] 42 $$ %%", "gibberish"),
    ("xk qz trr pfft hmm zzz brr", "gibberish"),       # letter runs without vowels: soup
])
def test_degenerate_reason_names_the_kind(text, reason):
    assert degenerate_reason(text) == reason


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "No.",                                             # short answers are answers
    "42",
    "Here's a step-by-step guide:\n\n1. **Prepare** the dough.\n2. Bake at 180°C for 20 minutes.",
    "```python\ndef add(a, b):\n    return a + b\n```",  # code: identifiers have vowels
    "Huawei's handling of employee misconduct is a complex regulatory situation.",
])
def test_real_answers_are_not_degenerate(text):
    assert degenerate_reason(text) is None, text


def test_arithmetic_is_not_gibberish():
    assert degenerate_reason("3 * 4 = 12, 12 + 6 = 18") is None


@pytest.mark.parametrize("text", [
    "Извините, но я не могу помочь с этим запросом.",   # a refusal in Russian
    "很抱歉 我 不能 帮助 你 做 这件 事",                   # Chinese, spaced into many tokens
    "Λυπάμαι, δεν μπορώ να βοηθήσω με αυτό.",           # Greek
    "Café crème brûlée is a French dessert.",            # accents
    "f'(x) = 2x + 3",                                    # formulas: lone letters are variables
    "x = 4, y = -2",
])
def test_answers_in_other_scripts_and_formulas_are_not_gibberish(text):
    assert degenerate_reason(text) is None, text


@pytest.mark.parametrize("text", [".", "...", "#$%&*", "?? !!",   # no letter or digit: noise at any length
                                  "ĠĊ ĉ ľ ń ŀ ł",                 # lone accented letters: decoded subword soup
                                  "аbс def ghі jkl"])              # Cyrillic and Latin mixed inside words
def test_symbols_and_mixed_script_soup_are_gibberish(text):
    assert degenerate_reason(text) == "gibberish", text


def test_degenerate_rate_is_reported_beside_every_benchmark():
    items = [Item("harmbench", "do harm [harm]", "do harm [harm]", True),
             Item("harmbench", "more harm [refuse]", "more harm [refuse]", True),
             Item("benign", "plain", "plain", False),
             Item("benign", "plain two", "plain two", False)]
    answers = {"do harm [harm]": LOOP, "more harm [refuse]": "", "plain": PROSE, "plain two": "## %% 9x qq zz ~~"}
    metrics, records, _ = evaluate_safety(lambda prompts: [answers[p] for p in prompts], MarkerJudge(), items)
    assert [r["degenerate"] for r in records] == [True, True, False, True]  # loop, empty, prose, soup
    for bench in ("harmbench", "benign"):
        deg = metrics[bench]["degenerate_rate"]
        assert (deg["count"], deg["labelled"]) == ({"harmbench": 2, "benign": 1}[bench], 2)
