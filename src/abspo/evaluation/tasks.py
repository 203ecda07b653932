"""Reasoning tasks that tell whether red-team training cost a role its general ability.

Self-play moves the defender towards refusing and the attacker towards jailbreak prose; either can quietly
forget how to do arithmetic or pick the right answer. A retention check scores a role and the frozen
anchor on the same items, so a task here only needs to be (1) cheap enough to run every few hundred steps,
(2) deterministic, and (3) scored identically for every model. Three kinds:

* ``gsm8k``: grade-school word problems from a JSONL file with ``question`` and ``final`` (the data kit's
  ``data/eval/gsm8k.jsonl``). Greedy generation with the model's chat template, scored by exact match of the
  final number (:mod:`abspo.evaluation.answers`).
* ``arithmetic``: generated, seeded easy sums ("What is 37 + 6?", "What is 7 * 8?"): the same scoring as gsm8k,
  but a 135M model gets about half of them right (it gets almost no GSM8K problem right), so there is signal
  to lose.
* ``multiple_choice``: any JSONL with ``question``, ``choices`` (list of strings) and ``answer`` (0-based index
  or letter). No generation: each choice is scored by its log-likelihood as the assistant's reply to the
  question, and the prediction is the argmax. ``normalise: mean`` (default) uses the mean log-prob per token
  of the choice, which does not favour short choices; ``normalise: sum`` uses the total log-prob (lm-eval's
  ``acc``). Both are computed in one batched forward pass per batch of items.

Every item is a ``(prompt, scorer)`` pair in effect: an :class:`ExactMatchTask` item is a question and the
number its answer must end on, a :class:`MultipleChoiceTask` item a question and the index of the right
choice. Bad files raise :class:`~abspo.core.errors.ConfigError` naming the config key and ``file:line``.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from abspo.weights.distributed import Collective
from abspo.core.errors import ConfigError
from abspo.core.jsonl import read_jsonl
from abspo.evaluation.answers import is_correct, parse_number
from abspo.game.rules import chat_prompt
from abspo.rl.rollout import build_scoring_batch, completion_logprobs, generate

TASK_NAMES = ("gsm8k", "multiple_choice", "arithmetic")
DEFAULT_GSM8K = "data/eval/gsm8k.jsonl"
GSM8K_INSTRUCTION = "\n\nSolve the problem step by step, then give the final answer as a number after '####'."
ARITHMETIC_INSTRUCTION = " Answer with just the number."
DEFAULT_MAX_NEW_TOKENS = {"gsm8k": 256, "arithmetic": 16, "multiple_choice": 0}


@dataclass
class TaskSpec:
    """Which reasoning task to score, and on how many items."""

    name: Literal["gsm8k", "multiple_choice", "arithmetic"] = "arithmetic"
    """gsm8k (exact match of the final number), multiple_choice (log-likelihood of each choice) or arithmetic
    (generated easy sums, exact match)."""
    path: str | None = None
    """JSONL file (gsm8k: question + final, default data/eval/gsm8k.jsonl; multiple_choice: question + choices +
    answer, required). Unused by arithmetic."""
    n: int = 50
    """Items to score: a seeded sample of the file (all of it if it has fewer), or n generated sums."""
    seed: int = 0
    """Seed of the sample (or of the generated sums)."""
    normalise: Literal["mean", "sum"] = "mean"
    """multiple_choice only: score a choice by its mean log-prob per token (mean) or its total log-prob (sum)."""


@dataclass(frozen=True)
class QAItem:
    question: str
    """The user message (before the task's instruction is appended)."""
    target: str
    """The number the answer must end on, as text (e.g. GSM8K's ``final``)."""


@dataclass(frozen=True)
class ChoiceItem:
    question: str
    choices: tuple[str, ...]
    answer: int
    """0-based index of the right choice."""


@dataclass(frozen=True)
class Outcome:
    correct: bool
    output: str
    """What the model answered: its generated text, or the choice it ranked first."""


class Task(ABC):
    """A fixed list of items and a batched scorer: one outcome per item."""

    name: str
    items: Sequence

    def __len__(self) -> int:
        return len(self.items)

    @abstractmethod
    def score(self, model, tokenizer, items: Sequence) -> list[Outcome]:
        """Whether ``model`` gets each item right, and what it answered (``model`` in eval mode, routed)."""


class ExactMatchTask(Task):
    """Greedy generation through the chat template; correct when the final number equals the target."""

    def __init__(self, name: str, items: Sequence[QAItem], instruction: str, max_new_tokens: int):
        self.name, self.items, self.instruction, self.max_new_tokens = name, list(items), instruction, max_new_tokens

    def prompts(self, tokenizer, items: Sequence[QAItem]) -> list[str]:
        return [chat_prompt(tokenizer, item.question + self.instruction) for item in items]

    def score(self, model, tokenizer, items: Sequence[QAItem]) -> list[Outcome]:
        gen = generate(model, tokenizer, self.prompts(tokenizer, items), self.max_new_tokens, temperature=0.0)
        return [Outcome(is_correct(text, item.target), text) for text, item in zip(gen.texts, items)]


class MultipleChoiceTask(Task):
    """Argmax over choices of the log-likelihood of the choice as the assistant's reply to the question."""

    name = "multiple_choice"

    def __init__(self, items: Sequence[ChoiceItem], normalise: Literal["mean", "sum"] = "mean"):
        self.items, self.normalise = list(items), normalise

    @torch.no_grad()
    def choice_logprobs(self, model, tokenizer, items: Sequence[ChoiceItem]) -> list[list[float]]:
        """Per item, the (mean or summed) log-prob of each choice given the question."""
        prompts, completions, owners = [], [], []
        for i, item in enumerate(items):
            context = tokenizer(chat_prompt(tokenizer, item.question), add_special_tokens=False).input_ids
            for choice in item.choices:
                prompts.append(context)
                completions.append(tokenizer(choice, add_special_tokens=False).input_ids)
                owners.append(i)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = next(model.parameters()).device
        logp, _ = completion_logprobs(model, build_scoring_batch(prompts, completions, pad, device))
        totals = logp.sum(-1).tolist()
        out: list[list[float]] = [[] for _ in items]
        for owner, total, completion in zip(owners, totals, completions):
            out[owner].append(total / len(completion) if self.normalise == "mean" else total)
        return out

    def score(self, model, tokenizer, items: Sequence[ChoiceItem]) -> list[Outcome]:
        outcomes = []
        for scores, item in zip(self.choice_logprobs(model, tokenizer, items), items):
            best = max(range(len(scores)), key=scores.__getitem__)
            outcomes.append(Outcome(best == item.answer, item.choices[best]))
        return outcomes


@dataclass
class EvalResult:
    """Per-item correctness and output of the items scored (in task order), and how long it took."""

    correct: list[bool] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    total: int = 0
    """Items the task has; ``len(correct)`` is less when the time budget ran out."""
    seconds: float = 0.0

    @property
    def scored(self) -> int:
        return len(self.correct)

    @property
    def score(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else float("nan")

    @property
    def complete(self) -> bool:
        return self.scored == self.total


def evaluate(task: Task, model, tokenizer, batch_size: int = 8, time_budget_s: float | None = None,
             limit: int | None = None, collective: Collective | None = None) -> EvalResult:
    """Score the first ``limit`` items (all by default) in batches.

    With a time budget, no new batch starts once ``time_budget_s`` seconds have passed (the first batch always
    runs), so a check costs at most the budget plus one batch; the result says how many items were scored.
    With several processes (``collective``) the decision is theirs together: all stop once any is over the
    budget. Under FSDP2 every forward is a collective, so a process that stopped on its own clock while another
    started a batch would leave that one waiting forever.
    """
    items = task.items[:limit] if limit is not None else task.items
    result = EvalResult(total=len(items))
    start = time.perf_counter()
    collective = collective or Collective()
    for lo in range(0, len(items), batch_size):
        if lo and time_budget_s is not None:
            over = torch.tensor(float(time.perf_counter() - start > time_budget_s))
            if collective.max(over).item() > 0:
                break
        for outcome in task.score(model, tokenizer, items[lo:lo + batch_size]):
            result.correct.append(outcome.correct)
            result.outputs.append(outcome.output)
    result.seconds = time.perf_counter() - start
    return result


# -- building tasks --------------------------------------------------------------------------------------------
def build_task(spec: TaskSpec, max_new_tokens: int | None = None, key: str = "task") -> Task:
    """The task ``spec`` describes; ``key`` names the spec in error messages (e.g. the callback's init arg)."""
    if spec.name not in TASK_NAMES:
        raise ConfigError(f"{key}.name", f"unknown task {spec.name!r}", f"use one of {list(TASK_NAMES)}")
    if spec.n < 1:
        raise ConfigError(f"{key}.n", f"must be >= 1, got {spec.n}", "set the number of items to score, e.g. 50")
    if spec.normalise not in ("mean", "sum"):
        raise ConfigError(f"{key}.normalise", f"unknown value {spec.normalise!r}", "use mean or sum")
    tokens = max_new_tokens if max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS[spec.name]
    if spec.name == "arithmetic":
        return ExactMatchTask("arithmetic", arithmetic_items(spec.n, spec.seed), ARITHMETIC_INSTRUCTION, tokens)
    if spec.name == "gsm8k":
        items = read_gsm8k(spec.path or DEFAULT_GSM8K, f"{key}.path")
        return ExactMatchTask("gsm8k", sample(items, spec.n, spec.seed), GSM8K_INSTRUCTION, tokens)
    if spec.path is None:
        raise ConfigError(f"{key}.path", "the multiple_choice task needs a JSONL file",
                          "set path to a file with one {\"question\", \"choices\", \"answer\"} object per line")
    return MultipleChoiceTask(sample(read_multiple_choice(spec.path, f"{key}.path"), spec.n, spec.seed), spec.normalise)


def sample(items: list, n: int, seed: int) -> list:
    """A seeded sample of ``n`` items in file order (all of them if there are no more than ``n``)."""
    if n >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def arithmetic_items(n: int, seed: int) -> list[QAItem]:
    """``n`` easy sums, a pure function of ``seed``, four kinds in turn: one-digit addition (3 + 5), two-digit plus
    one-digit addition (37 + 6), subtraction within 20 (14 - 6) and the times table (7 * 8, 2-12 times 2-9).

    Mixed difficulty on purpose: SmolLM2-135M-Instruct gets roughly 70%, 35%, 30% and 60% of these right (measured
    on 20 items each), so the anchor scores near the middle of the scale and a role can visibly lose (or gain).
    """
    rng = random.Random(f"arithmetic-{seed}")
    items = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            items.append(QAItem(f"What is {a} + {b}?", str(a + b)))
        elif kind == 1:
            a, b = rng.randint(10, 50), rng.randint(1, 9)
            items.append(QAItem(f"What is {a} + {b}?", str(a + b)))
        elif kind == 2:
            a = rng.randint(5, 20)
            b = rng.randint(1, min(9, a))
            items.append(QAItem(f"What is {a} - {b}?", str(a - b)))
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 9)
            items.append(QAItem(f"What is {a} * {b}?", str(a * b)))
    return items


def _text_field(row: dict, name: str, where: str, key: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"{where} has no non-empty string field {name!r}", f"give every line a {name!r} field")
    return value


def read_gsm8k(path: str | Path, key: str) -> list[QAItem]:
    """GSM8K-style items: ``question`` and ``final`` (the answer number as text, e.g. "2280" or "3.5")."""
    items = []
    for number, row in read_jsonl(path, key, '{"question": ..., "final": ...} object'):
        where = f"{path}:{number}"
        question = _text_field(row, "question", where, key)
        final = row.get("final")
        final = str(final) if isinstance(final, (int, float)) and not isinstance(final, bool) else final
        if not isinstance(final, str) or parse_number(final) is None:
            raise ConfigError(key, f"{where} has no numeric field 'final' (got {row.get('final')!r})",
                              "give every line the answer number as \"final\", e.g. \"final\": \"2280\"")
        items.append(QAItem(question, final))
    return items


def read_multiple_choice(path: str | Path, key: str) -> list[ChoiceItem]:
    """Items with ``question``, ``choices`` (>= 2 non-empty strings) and ``answer`` (0-based index or letter)."""
    items = []
    for number, row in read_jsonl(path, key, '{"question": ..., "choices": [...], "answer": ...} object'):
        where = f"{path}:{number}"
        question = _text_field(row, "question", where, key)
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise ConfigError(key, f"{where}: 'choices' must be a list of at least 2 non-empty strings",
                              "write e.g. \"choices\": [\"Paris\", \"Rome\"]")
        items.append(ChoiceItem(question, tuple(choices), _answer_index(row.get("answer"), len(choices), where, key)))
    return items


def _answer_index(answer, n_choices: int, where: str, key: str) -> int:
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        index = ord(answer.strip().upper()) - ord("A")
    else:
        raise ConfigError(key, f"{where}: 'answer' must be a 0-based index or a letter, got {answer!r}",
                          "write e.g. \"answer\": 0 or \"answer\": \"A\"")
    if not 0 <= index < n_choices:
        raise ConfigError(key, f"{where}: answer {answer!r} is out of range for {n_choices} choices",
                          f"use an index in 0..{n_choices - 1} or a letter in A..{chr(ord('A') + n_choices - 1)}")
    return index
