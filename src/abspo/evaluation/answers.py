"""Final-number extraction for GSM8K-style answers, and numeric comparison.

Why a dedicated module: a retention score is only as good as its answer parser. Small models write
"#### 42", "The answer is $1,234.", "\\boxed{3.5}", "**Answer:** -7 apples" or simply end on "= 42.", and a
parser that misses any of these reports a reasoning drop that never happened. Everything here is a pure
function of the text, so every rule is pinned down by a hand-written case in ``tests/test_answers.py``.

Rules, in order of preference (the first rule that finds a number wins; within a rule the *last*
occurrence counts, because models restate the question before answering it):

1. ``#### N`` (GSM8K's own answer marker);
2. ``the answer is N`` / ``the final answer is: N``;
3. ``\\boxed{N}``;
4. ``answer: N`` (also ``**Answer:** N``);
5. otherwise the last number anywhere in the text.

For ``####``, N is the first number on the rest of its line. For the other markers N is read from the rest
of the *sentence* (up to a full stop followed by a space, or the end of the line): the number after its last
``=`` if it has one ("The answer is 30 + 10 = 40." is 40), else its first number. A marker with no number
there is skipped. Numbers may carry thousands separators (``1,234``, LaTeX ``1{,}234`` /
``1\\,234``), a currency sign (``$5``, ``\\$5``, ``-$5``), a percent sign, a sign (``-7``, Unicode ``−7``),
decimals (``3.5``, ``.5``), a trailing full stop or a unit (``42.``, ``5km``); LaTeX fractions
``\\frac{a}{b}`` become a/b. Not supported (on purpose, GSM8K never needs them): plain ``a/b`` fractions,
scientific notation, number words ("forty-two") and multipliers ("1.5 million" is 1.5).

Values are compared numerically with a tight tolerance (``3.50 == 3.5``, ``12 == 12.0``).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# A number token: optional sign, optional currency sign, then digits with optional thousands groups and
# decimals, or a bare decimal such as ".5". The lookbehind keeps "x2", "v1.2" and the "3" of "1.2.3" out, and
# makes "10-4" read as 10 and 4 (a minus glued to a preceding digit or letter is an operator, not a sign).
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>-)?(?:\$\s?)?(?P<sign2>-)?"
    r"(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
_HASHES = re.compile(r"####")
_ANSWER_IS = re.compile(r"\banswer\s+is\b\s*:?", re.IGNORECASE)
_ANSWER_COLON = re.compile(r"\banswer\b\W{0,3}?\s*[:=]\s*\**", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(-?\d+(?:\.\d+)?)\s*\}")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_DIGIT_SPACE = re.compile(r"(?<=\d)(?:\\,|\\!|\\;|\\ |~|\{,\})(?=\d)")


def normalise(text: str) -> str:
    """Rewrite the LaTeX and Unicode spellings of numbers into plain ones (``1{,}234`` -> ``1,234``)."""
    text = text.replace("\u2212", "-").replace("\u2013", "-")  # Unicode minus / en dash written as a sign
    text = _DIGIT_SPACE.sub(lambda m: "," if m.group(0) == "{,}" else "", text)
    text = text.replace("{,}", ",")
    text = _TEXT_CMD.sub(r"\1", text)
    text = _FRAC.sub(lambda m: _fraction_text(m.group(1), m.group(2)), text)
    return text.replace("\\$", "$").replace("\\%", "%").replace("\\left", "").replace("\\right", "")


def _fraction_text(numerator: str, denominator: str) -> str:
    den = Fraction(denominator)
    if den == 0:
        return f"{numerator}/{denominator}"
    value = Fraction(numerator) / den
    return str(value.numerator) if value.denominator == 1 else repr(float(value))


def parse_number(text: str) -> float | None:
    """The first number in ``text`` as a float (``"$1,234.50"`` -> 1234.5), or None if there is none."""
    numbers = _numbers(normalise(text))
    return numbers[0] if numbers else None


def _numbers(text: str) -> list[float]:
    out = []
    for match in _NUMBER.finditer(text):
        value = float(match.group("body").replace(",", ""))
        out.append(-value if match.group("sign") or match.group("sign2") else value)
    return out


def _first_number(line: str) -> float | None:
    numbers = _numbers(line)
    return numbers[0] if numbers else None


def _sentence_value(segment: str) -> float | None:
    """The value a marker introduces: the number after the sentence's last '=', else its first number."""
    sentence = _SENTENCE_END.split(segment, maxsplit=1)[0]
    if "=" in sentence:
        value = _first_number(sentence.rsplit("=", 1)[1])
        if value is not None:
            return value
    return _first_number(sentence)


def _after_last(pattern: re.Pattern[str], text: str, read=_sentence_value) -> float | None:
    """The value after the last occurrence of ``pattern`` that is followed by one (``read`` from the rest of the line)."""
    for match in reversed(list(pattern.finditer(text))):
        value = read(text[match.end():].split("\n", 1)[0])
        if value is not None:
            return value
    return None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, with nested braces matched."""
    out = []
    for match in _BOXED.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[match.end():i - 1] if depth == 0 else text[match.end():])
    return out


def extract_answer(text: str) -> float | None:
    """The final numeric answer of a worked solution (rules in the module docstring), or None."""
    text = normalise(text)
    value = _after_last(_HASHES, text, read=_first_number)
    if value is None:
        value = _after_last(_ANSWER_IS, text)
    if value is not None:
        return value
    for content in reversed(_boxed_contents(text)):
        value = _sentence_value(content)
        if value is not None:
            return value
    value = _after_last(_ANSWER_COLON, text)
    if value is not None:
        return value
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def same_number(a: float | None, b: float | None, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Numeric equality for answers: ``3.50 == 3.5``, ``12 == 12.0``; None equals nothing."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def is_correct(output: str, target: str | float) -> bool:
    """Does the model ``output`` end on the ``target`` number (a number or its text, e.g. GSM8K's ``final``)?"""
    expected = target if isinstance(target, (int, float)) else parse_number(target)
    return same_number(extract_answer(output), expected)
