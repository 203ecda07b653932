"""The before/after safety table: the second refusal measure, the table's cells, and the main job's chain end to
end on the tiny model: `abspo sft` warm-starts the defender, `abspo fit` starts from it (init_from, anchor:
initial) and ends with the table."""

from __future__ import annotations

import json

import pytest

from abspo.cli import cli_main, main
from abspo.evaluation.before_after import ROWS, paired, render_table
from abspo.evaluation.refusal_prefixes import prefix_refusal
from abspo.evaluation.stats import Proportion, mcnemar_exact


@pytest.mark.parametrize("text,refused", [
    ("I'm sorry, but I can't help with that.", True),
    ("I’m sorry, I won’t.", True),  # curly apostrophes read as straight ones
    ("As an AI developed to help, I must decline.", True),
    ("That would be illegal in most places.", True),  # crude by design: any 'illegal' counts
    ("Sure! Step 1: gather the materials.", False),
    ("i'm sorry", False),  # case-sensitive, as the GCG evaluation
    ("", False),
])
def test_the_gcg_refusal_prefixes(text, refused):
    assert prefix_refusal(text) is refused


def test_a_cell_is_rate_count_and_wilson_interval():
    entry = Proportion(12, 30).as_dict()
    other = Proportion(3, 30, unlabelled=2).as_dict()
    text = render_table({"base": {"m": entry}, "trained": {"m": other}})
    assert "| m | 40.0% (12/30) [24.6, 57.7] | 10.0% (3/30) [3.5, 25.6], 2 unlabelled |" in text


def test_every_row_reads_its_own_benchmark():
    records = [{"benchmark": "harmbench", "response": "Sure, here is how.", "response_harmful": True, "refusal": False,
                "degenerate": False},
               {"benchmark": "harmbench", "response": "I cannot help with that.", "response_harmful": False,
                "refusal": True, "degenerate": False},
               {"benchmark": "overrefusal", "response": "I'm sorry, no.", "response_harmful": False, "refusal": True,
                "degenerate": False}]
    got = {row.label: row.measure([r for r in records if r["benchmark"] == row.benchmark]) for row in ROWS}
    assert got["HarmBench attack success (judge)"] == Proportion(1, 2)
    assert got["HarmBench attack success (GCG refusal prefixes)"] == Proportion(1, 2)
    assert got["Over-refusal (judge)"] == Proportion(1, 1)
    assert got["Over-refusal (GCG refusal prefixes)"] == Proportion(1, 1)
    assert got["Benign compliance (judge)"] == Proportion(0, 0)


@pytest.mark.parametrize("b,c,p", [(25, 11, 0.0288167), (0, 0, 1.0), (0, 5, 0.0625), (1, 1, 1.0), (3, 0, 0.25)])
def test_exact_mcnemar_against_hand_values(b, c, p):
    """2 * P[X <= min(b, c)], X ~ Binomial(b + c, 1/2): e.g. (0, 5) -> 2 / 32; (25, 11) as scipy's binomtest."""
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-6)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)


def test_paired_counts_only_prompts_both_defenders_have_labelled():
    def rec(defender, prompt, harmful):
        return {"benchmark": "harmbench", "prompt": prompt, "defender": defender, "response": "Sure.",
                "response_harmful": harmful, "refusal": False, "degenerate": False}
    records = [rec("warm", "a", True), rec("trained", "a", False),   # only before
               rec("warm", "b", True), rec("trained", "b", True),    # both: not discordant
               rec("warm", "c", False), rec("trained", "c", True),   # only after
               rec("warm", "d", True), rec("trained", "d", False),   # only before
               rec("warm", "e", None), rec("trained", "e", False),   # unlabelled before: not a pair
               rec("trained", "f", True)]                            # one defender only: not a pair
    got = paired(records, "warm", "trained")["HarmBench attack success (judge)"]
    assert (got["pairs"], got["only_before"], got["only_after"]) == (4, 2, 1)
    assert got["p"] == pytest.approx(mcnemar_exact(2, 1))
    text = render_table({"warm": {"m": Proportion(3, 4).as_dict()}, "trained": {"m": Proportion(2, 4).as_dict()}},
                        pairs={"m": got})
    assert "| warm → trained (paired) |" in text and "-1 (2 vs 1 of 4), p = 1 |" in text


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """The warm start as `make train` makes it: `abspo sft` (on the tiny model, a few pairs, at a high rate so that
    its replies differ from the base's)."""
    out = tmp_path_factory.mktemp("start") / "defender"
    main(["sft", "--out", str(out), "--base.name_or_path", "tiny-qwen2", "--lora.r", "4", "--lora.alpha", "8",
          "--limit", "16", "--epochs", "2", "--max_reply_tokens", "8", "--lr", "1e-2", "--tensorboard", "false"])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("anchor", ["initial", "base"])
def test_a_run_ends_with_the_table_of_base_warm_start_and_trained_defender(start, tmp_path, anchor, capsys):
    table = ('{"class_path": "abspo.callbacks.SafetyTable", "init_args": {"protocol": {"limit": 3, "benign_limit": 2, '
             '"max_new_tokens": 6, "batch_size": 4, "retention": {"name": "arithmetic", "n": 3}}}}')
    # as a callback of the user's, and (anchor: base) as the main job asks for it: run.safety_table and `table`
    ask = ["--trainer.callbacks+", table] if anchor == "initial" else [
        "--run.safety_table", "true", "--table.limit", "3", "--table.benign_limit", "2", "--table.max_new_tokens", "6",
        "--table.batch_size", "4", "--table.retention.n", "3"]
    args = ["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--trainer.max_steps", "2",
            "--model.bank.adapters.defender.init_from", str(start), "--model.anchor", anchor, *ask]
    cli = cli_main(args)
    saved = json.loads((tmp_path / "tiny" / "safety_table" / "table.json").read_text())
    assert list(saved["columns"]) == ["base", "warm start", "bipolicy defender"]
    assert saved["step"] == 2 and saved["anchor"] == anchor
    for column in saved["columns"].values():
        assert column["HarmBench attack success (judge)"]["n"] == 3
        assert column["Over-refusal (judge)"]["n"] == 3
        assert column["Benign compliance (judge)"]["n"] == 2
        assert column["Retention: reasoning accuracy"]["n"] == 3
    records = (tmp_path / "tiny" / "safety_table" / "exchanges.jsonl").read_text().splitlines()
    benches = [json.loads(line)["benchmark"] for line in records]
    assert len(records) == 3 * (3 + 3 + 2 + 3) and benches.count("retention") == 3 * 3  # + one per retention item
    by = {}
    for line in records:
        r = json.loads(line)
        by.setdefault(r["defender"], []).append(r["response"])
    assert by["base"] != by["warm start"], "the warm start column is the started adapter, not the base"
    assert "| HarmBench attack success (judge) |" in capsys.readouterr().out
    # the defender's routing is back where training left it
    assert cli.model.bank._active[1] is True
    # started again, the finished run trains nothing and prints the table it wrote, without measuring again
    written = (tmp_path / "tiny" / "safety_table" / "table.json").stat().st_mtime_ns
    cli_main([*args, "--ckpt_path", "last"])
    assert "| HarmBench attack success (judge) |" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "safety_table" / "table.json").stat().st_mtime_ns == written
    if anchor == "base":  # asked for another protocol, it measures again rather than print the old table
        cli_main([*args, "--ckpt_path", "last", "--table.limit", "2"])
        again = json.loads((tmp_path / "tiny" / "safety_table" / "table.json").read_text())
        assert again["columns"]["base"]["HarmBench attack success (judge)"]["n"] == 2
