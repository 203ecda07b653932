"""The warm-start pairs: disjoint from every evaluation set, only the intended XSTest styles, counts as recorded."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from abspo.training.warm_start import EVAL_SETS, SOURCE, warm_start_pairs

REPO = Path(__file__).resolve().parents[1]


def key(text: str) -> str:  # the data kit's normalisation, written out again here on purpose
    return re.sub(r"\s+", " ", text).strip().lower()


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def intended(row: dict) -> bool:
    return (row["style"] == "refusal" and row["prompt_harmful"] is True) or \
        (row["style"] == "compliance" and row["prompt_harmful"] is False)


@pytest.fixture(scope="module")
def default_pairs():
    return warm_start_pairs()


@pytest.fixture(scope="module")
def all_pairs():
    return warm_start_pairs(replies_per_prompt=None)


def test_eval_sets_are_the_five_evaluation_files():
    assert set(EVAL_SETS.values()) == {"data/eval/harmbench.jsonl", "data/eval/overrefusal.jsonl",
                                       "data/eval/jailbreak_templates.jsonl", "data/judge_eval/xstest_test.jsonl",
                                       "data/judge_eval/strongreject.jsonl"}


@pytest.mark.parametrize("which", ["default_pairs", "all_pairs"])
def test_no_pair_prompt_comes_from_an_evaluation_set(which, request):
    pairs, provenance = request.getfixturevalue(which)
    prompts = {key(p.prompt) for p in pairs}
    assert prompts
    for name, rel in EVAL_SETS.items():
        data = rows(REPO / rel)
        if name == "jailbreak_templates":
            for row in data:
                template = row["template"]
                assert key(template) not in prompts and key(template.replace("{prompt}", "")) not in prompts
                fixed = [key(part) for part in template.split("{prompt}") if len(key(part)) >= 20]
                assert not [p for p in prompts if any(part in p for part in fixed)], row["name"]
        else:
            assert not prompts & {key(r["prompt"]) for r in data}, name
        assert provenance["eval_sets"][name]["sha256"] == hashlib.sha256((REPO / rel).read_bytes()).hexdigest()


def test_only_refusals_of_unsafe_and_compliance_with_safe_prompts(all_pairs, default_pairs):
    source = {r["source"]: r for r in rows(REPO / SOURCE)}
    pairs, provenance = all_pairs
    assert len(pairs) == sum(intended(r) for r in source.values())  # nothing overlaps, so all of them
    for pair in pairs:
        row = source[pair.source]
        assert intended(row), pair.source
        assert (pair.prompt, pair.reply, pair.harmful, pair.style) == (
            row["prompt"].strip(), row["response"].strip(), row["prompt_harmful"], row["style"])
    assert {(p.style, p.harmful) for p in pairs} == {("refusal", True), ("compliance", False)}
    # one reply per prompt by default: the shortest of the prompt's intended replies
    shortest: dict[str, int] = {}
    for row in source.values():
        if intended(row):
            n = len(row["response"].strip())
            shortest[key(row["prompt"])] = min(n, shortest.get(key(row["prompt"]), n))
    few, _ = default_pairs
    assert len(few) == len({key(p.prompt) for p in few}) == len(shortest)
    assert all(len(p.reply) == shortest[key(p.prompt)] for p in few)


@pytest.mark.parametrize("which", ["default_pairs", "all_pairs"])
def test_counts_are_what_the_provenance_says(which, request):
    pairs, provenance = request.getfixturevalue(which)
    data = rows(REPO / SOURCE)
    assert provenance["sha256"] == hashlib.sha256((REPO / SOURCE).read_bytes()).hexdigest()
    assert provenance["rows"] == len(data)
    assert provenance["kept"] == len(pairs)
    assert provenance["rows"] == provenance["kept"] + sum(provenance["dropped"].values())
    assert provenance["kept_by_style"] == dict(Counter(p.style for p in pairs))
    dropped = provenance["dropped"]
    assert dropped["style:partial_refusal"] == sum(r["style"] == "partial_refusal" for r in data)
    assert dropped["style:refusal_of_safe_prompt"] == sum(r["style"] == "refusal" and not r["prompt_harmful"]
                                                          for r in data)
    assert dropped["style:compliance_with_unsafe_prompt"] == sum(r["style"] == "compliance" and r["prompt_harmful"]
                                                                for r in data)
    assert set(provenance["eval_matches"]) == set(EVAL_SETS)
    assert provenance["cut_replies"] == sum(p.cut for p in pairs)


def test_order_is_fixed_and_mixed(default_pairs):
    again, _ = warm_start_pairs()
    pairs, _ = default_pairs
    assert again == pairs
    assert {p.style for p in pairs[:16]} == {"refusal", "compliance"}, "a --limit prefix holds both behaviours"


def test_pairs_that_overlap_an_evaluation_set_are_dropped_and_counted(tmp_path, all_pairs):
    """The shipped sets share no prompt with XSTest's train split, so plant overlaps in a copy and see them go."""
    for rel in [SOURCE, *EVAL_SETS.values()]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    pairs, _ = all_pairs
    per_prompt = Counter(key(p.prompt) for p in pairs)
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    planted = {name: prompts[i] for i, name in enumerate(EVAL_SETS)}  # one distinct training prompt per set
    # a training prompt that contains a template's fixed text (the template holds its tail)
    in_template = next(p for p in prompts[len(EVAL_SETS):] if len(p) >= 40)
    for name, prompt in planted.items():
        path = tmp_path / EVAL_SETS[name]
        if name == "jailbreak_templates":
            row = {"template": "  " + prompt.upper() + "  {prompt}", "name": "planted/equal", "source": "test"}
            extra = {"template": f"{{prompt}}\n\n{in_template[10:]}", "name": "planted/part", "source": "test"}
            lines = [json.dumps(row), json.dumps(extra)]
        else:
            lines = [json.dumps({"prompt": "\n" + re.sub(" ", "   ", prompt.upper()) + " "})]
        with path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    kept, provenance = warm_start_pairs(replies_per_prompt=None, root=tmp_path)
    left = {key(p.prompt) for p in kept}
    gone = [*planted.values(), in_template]
    assert not left & {key(p) for p in gone}
    assert len(kept) == len(pairs) - sum(per_prompt[key(p)] for p in gone)
    expected = {name: per_prompt[key(p)] for name, p in planted.items()}
    expected["jailbreak_templates"] += per_prompt[key(in_template)]
    assert provenance["eval_matches"] == expected
    assert {k: v for k, v in provenance["dropped"].items() if k.startswith("eval:")} == {
        f"eval:{k}": v for k, v in expected.items()}
    assert provenance["rows"] == provenance["kept"] + sum(provenance["dropped"].values())
