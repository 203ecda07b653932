"""The game's string logic: parsing reasoning turns, rendering chat prompts, filling templates."""

from __future__ import annotations

import pytest

from abspo.game.rules import (
    ATTACKER_BENIGN,
    ATTACKER_HARMFUL,
    REASONING_SUFFIX,
    GameConfig,
    ParsedTurn,
    ATTACKER_FORMATS,
    attacker_forfeits,
    attacker_instruction,
    chat_prompt,
    defender_message,
    parse_reasoning_turn,
    read_attacker_turn,
)

# -- parse_reasoning_turn -------------------------------------------------------------------------------------


def test_well_formed_turn():
    assert parse_reasoning_turn("<think>plan it</think><answer>Tell me X</answer>") == ParsedTurn("Tell me X", True)


def test_well_formed_with_surrounding_whitespace_and_multiline_answer():
    out = "  \n<think>line 1\nline 2</think>\n\n<answer>\n  Tell me\nabout X  \n</answer>\n "
    assert parse_reasoning_turn(out) == ParsedTurn("Tell me\nabout X", True)


def test_missing_tags_gives_whole_text_not_well_formed():
    assert parse_reasoning_turn("  just a prompt  ", fallback="SEED") == ParsedTurn("just a prompt", False)


def test_unclosed_answer_gives_answer_body():
    out = "<think>plan</think><answer>Tell me X\nin detail"
    assert parse_reasoning_turn(out, fallback="SEED") == ParsedTurn("Tell me X\nin detail", False)


def test_text_after_think_only():
    assert parse_reasoning_turn("<think>plan</think>  Tell me X ", fallback="SEED") == ParsedTurn("Tell me X", False)


def test_unclosed_think_keeps_text_without_tags():
    assert parse_reasoning_turn("<think>still thinking", fallback="SEED") == ParsedTurn("still thinking", False)


@pytest.mark.parametrize("output, text", [
    ("<think>secret</think>", ""),                                         # closed think, nothing else: a forfeit
    ("<think>secret</think><answer>  </answer>", ""),                      # an empty answer
    ("<think>a <answer>leak</answer></think><answer>x</answer>", "x"),      # an answer inside the think block
    ("<think>secret</think> <think>more</think> Tell me X", "Tell me X"),   # text between and after blocks
])
def test_a_closed_think_block_is_never_shown(output, text):
    assert parse_reasoning_turn(output) == ParsedTurn(text, False)


@pytest.mark.parametrize("output, text", [
    ("<Think>secret</Think><Answer>Tell me X</Answer>", "Tell me X"),      # case variants: hidden, not well formed
    ("<THINK>secret</THINK> Tell me X", "Tell me X"),
    ("<think>secret</THINK><answer>Tell me X</answer>", "Tell me X"),
    ("<Think>secret</Think>", "SEED"),
])
def test_tags_in_another_case_still_hide_the_reasoning(output, text):
    assert parse_reasoning_turn(output, fallback="SEED") == ParsedTurn(text, False)


def test_trailing_text_after_answer_is_not_well_formed():
    assert parse_reasoning_turn("<think>a</think><answer>X</answer> and more") == ParsedTurn("X", False)


def test_answer_before_think_is_not_well_formed():
    assert parse_reasoning_turn("<answer>X</answer><think>a</think>") == ParsedTurn("X", False)


def test_duplicate_answer_blocks_not_well_formed_and_first_answer_used():
    assert parse_reasoning_turn("<think>a</think><answer>X</answer><answer>Y</answer>") == ParsedTurn("X", False)


def test_answer_tag_nested_in_answer_not_well_formed():
    parsed = parse_reasoning_turn("<think>a</think><answer>X <answer>Y</answer>")
    assert parsed.well_formed is False
    assert "<answer>" not in parsed.text and "</answer>" not in parsed.text


# "Well-formed means exactly one think block followed by one non-empty answer block and nothing else."
@pytest.mark.parametrize("output", [
    "<think>a</think><think>b</think><answer>X</answer>",                 # two think blocks
    "<think>a<think>b</think><answer>X</answer>",                         # think nested in think
    "<think>a<answer>b</answer></think><answer>X</answer>",               # an answer block inside think
    "<think>a</think><answer>X</answer></answer>",                        # duplicate closing answer tag
    "<think>a</think><answer>X</think>Y</answer>",                        # stray </think> in the answer
], ids=["two-think", "nested-think", "answer-in-think", "double-close-answer", "close-think-in-answer"])
def test_duplicate_or_nested_tags_are_not_well_formed(output):
    parsed = parse_reasoning_turn(output, fallback="SEED")
    assert parsed.well_formed is False
    # the defender must never see the reasoning tags
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag not in parsed.text


@pytest.mark.parametrize("output", ["", "   \n\t ", "<think>", "<think></think>", "<answer></answer>"])
def test_empty_output_falls_back_to_seed(output):
    assert parse_reasoning_turn(output, fallback="SEED") == ParsedTurn("SEED", False)


def test_empty_think_and_empty_answer_falls_back_to_seed():
    # answer body empty, nothing after </think> but tags, whole output without tags empty -> the seed
    assert parse_reasoning_turn("<think></think><answer></answer>", fallback="SEED") == ParsedTurn("SEED", False)


def test_empty_answer_never_gives_an_empty_prompt():
    # answer body is blank, so this is not well formed; the fallback chain (answer body, text after </think>,
    # whole output without tags, seed) must still give the defender something: "plan" or the seed, never "".
    parsed = parse_reasoning_turn("<think>plan</think><answer>   </answer>", fallback="SEED")
    assert parsed.well_formed is False
    assert parsed.text in ("plan", "SEED")


def test_default_fallback_is_empty_string():
    assert parse_reasoning_turn("") == ParsedTurn("", False)


# -- chat_prompt ----------------------------------------------------------------------------------------------


class NoTemplateTokenizer:
    """A base model's tokenizer: no chat template, so chat_prompt uses its plain-text layout."""

    chat_template = None


class TagTemplateTokenizer:
    """A tokenizer with a (trivial) chat template rendering ``<role>content</role>``."""

    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        if tokenize:
            raise TypeError("chat_prompt needs text, not token ids")
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def test_chat_prompt_without_template_user_only():
    assert chat_prompt(NoTemplateTokenizer(), "hi {x}") == "User: hi {x}\nAssistant: "


def test_chat_prompt_without_template_with_system_and_prefill():
    text = chat_prompt(NoTemplateTokenizer(), "hi", system="Be safe.", prefill="<think>")
    assert text == "Be safe.\n\nUser: hi\nAssistant: <think>"


def test_chat_prompt_object_without_chat_template_attribute():
    assert chat_prompt(object(), "hi", prefill="P") == "User: hi\nAssistant: P"


def test_chat_prompt_with_template_adds_generation_prompt_and_prefill():
    tok = TagTemplateTokenizer()
    assert chat_prompt(tok, "hi", prefill="<think>") == "<user>hi</user><assistant><think>"
    assert chat_prompt(tok, "hi", system="S") == "<system>S</system><user>hi</user><assistant>"
    # an empty system prompt is no system message
    assert chat_prompt(tok, "hi", system="") == "<user>hi</user><assistant>"


# -- templates ------------------------------------------------------------------------------------------------


def test_attacker_instruction_picks_template_by_label_and_appends_the_format():
    cfg = GameConfig(attacker_harmful_template="H<{seed}>", attacker_benign_template="B[{seed}]")
    assert attacker_instruction(cfg, "make X", harmful=True) == "H<make X>" + ATTACKER_FORMATS["think_answer"]
    assert attacker_instruction(cfg, "make X", harmful=False) == "B[make X]" + ATTACKER_FORMATS["think_answer"]
    plain = GameConfig(attacker_harmful_template="H<{seed}>", attacker_format="plain")
    assert attacker_instruction(plain, "make X", harmful=True) == "H<make X>\n\nReply with the rewritten prompt only."


def test_attacker_instruction_substitutes_seed_literally():
    cfg = GameConfig(attacker_harmful_template="H<{seed}> {other} {}", attacker_benign_template="B",
                     attacker_format="plain")
    # braces in the seed and in the template are kept as they are; "{seed}" inside the seed is not re-expanded
    assert attacker_instruction(cfg, "write {x} and {seed} and {0}", True) == \
        "H<write {x} and {seed} and {0}> {other} {}" + ATTACKER_FORMATS["plain"]


def test_default_attacker_templates_contain_the_seed():
    cfg = GameConfig()
    harmful = attacker_instruction(cfg, "{x}", True)
    benign = attacker_instruction(cfg, "{x}", False)
    assert "Request: {x}\n" in harmful and "{seed}" not in harmful
    assert "Request: {x}\n" in benign and "{seed}" not in benign
    assert harmful.startswith(ATTACKER_HARMFUL[:40]) and benign.startswith(ATTACKER_BENIGN[:40])
    assert harmful != benign


def test_defender_message_reasoning_suffix_only_when_asked():
    assert defender_message(GameConfig(), "Q?") == "Q?"
    assert defender_message(GameConfig(defender_reasoning=True), "Q?") == "Q?" + REASONING_SUFFIX


def test_turn_readers_shared_by_training_and_evaluation():
    from abspo.game.rules import GameConfig, read_attacker_turn, read_defender_turn

    cfg = GameConfig()  # think_answer: attacker prefill "<think>"
    output, parsed = read_attacker_turn(cfg, "plan</think><answer>rewrite</answer>")
    assert output == "<think>plan</think><answer>rewrite</answer>"
    assert (parsed.text, parsed.well_formed) == ("rewrite", True)
    output, parsed = read_attacker_turn(cfg, "")
    assert (parsed.text, parsed.well_formed) == ("", False), "nothing left: no seed is handed to the defender"
    assert attacker_forfeits(parsed)
    assert read_defender_turn(cfg, "  plain answer \n") == ("plain answer", None)
    reasoning = GameConfig(defender_reasoning=True)
    assert read_defender_turn(reasoning, "<think>x</think><answer>ok</answer>") == ("ok", True)


# -- the plain attacker format and forfeits ---------------------------------------------------------------------


@pytest.mark.parametrize("completion, text", [
    ("  Tell me X \n", "Tell me X"),
    ("<think>plan it</think>\nTell me X", "Tell me X"),          # leading reasoning is hidden
    ("Tell me <answer>X</answer>", "Tell me X"),                 # stray tags never reach the defender
    ("<think>plan</think> <think>more</think> Y", "more Y"),     # only the leading block is reasoning
    ("<THINK>plan it</Think> Tell me X", "Tell me X"),           # in any case
])
def test_plain_turn_is_the_whole_reply(completion, text):
    cfg = GameConfig(attacker_format="plain")
    output, parsed = read_attacker_turn(cfg, completion)
    assert cfg.prefill == "" and output == completion
    assert parsed == ParsedTurn(text, True)
    assert not attacker_forfeits(parsed)


@pytest.mark.parametrize("completion", ["", "   ", "<think>only a plan</think>", "<think></think>",
                                        "ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab",
                                        "x7 ## %% &&& 99 -- ;;"])
def test_plain_turn_with_nothing_playable_forfeits(completion):
    cfg = GameConfig(attacker_format="plain")
    _, parsed = read_attacker_turn(cfg, completion)
    assert attacker_forfeits(parsed), repr(completion)


def test_explicit_prefill_overrides_the_format_default():
    assert GameConfig(attacker_format="plain", attacker_prefill="Sure: ").prefill == "Sure: "
    assert GameConfig().prefill == "<think>"
