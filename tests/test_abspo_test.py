"""`abspo test`: the safety report of a run's defender, from its checkpoint or an adapter folder, through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.cli import cli_main, main
from abspo.weights.models import load_base
from tests.conftest import TINY, perturb, tiny_bank

SMALL = ["--eval.limit", "2", "--eval.templates", "1", "--eval.behaviours", "2", "--eval.max_new_tokens", "8"]


def eval_steps(run_dir) -> set[int]:
    """Steps of the eval/* scalars in a run's TensorBoard files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = set()
    for events in (run_dir / "tb").glob("events*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        steps |= {e.step for tag in acc.Tags()["scalars"] if tag.startswith("eval/") for e in acc.Scalars(tag)}
    return steps


@pytest.mark.slow
def test_abspo_test_reports_on_the_checkpointed_defender(tmp_path):
    cli_main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--trainer.max_steps", "4"])
    cli = cli_main(["test", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path),
                    "--ckpt_path", "last", *SMALL])
    assert eval_steps(tmp_path / "tiny") == {1}, "drawn at the last trained batch (index 1), the training x-axis"
    checkpoint = torch.load(tmp_path / "tiny" / "checkpoints" / "last.ckpt", weights_only=True)
    loaded = dict(cli.model.named_parameters())
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(loaded[name], value), f"{name} was not loaded from the checkpoint"
    out = tmp_path / "tiny" / "eval" / "step-4"
    report = json.loads((out / "report.json").read_text())
    assert set(report["benchmarks"]) == {"harmbench", "jailbreak", "overrefusal", "benign"}
    exchanges = [json.loads(line) for line in (out / "exchanges.jsonl").read_text().splitlines()]
    assert len(exchanges) == sum(b["prompts"] for b in report["benchmarks"].values()) == 2 + 2 + 2 + 2
    assert "attack_success_rate" in (out / "report.md").read_text()
    assert report["generation"]["max_new_tokens"] == 8  # --eval.max_new_tokens, not the training game's 16
    assert report["generation"]["batch_size"] == 16  # the protocol's, not data.batch_size (8): comparable reports
    for bench, entry in report["benchmarks"].items():  # the figures recount from the recorded verdicts
        rows = [e for e in exchanges if e["benchmark"] == bench]
        label, positive = ("response_harmful", True) if entry["metric"] == "attack_success_rate" else (
            "refusal", entry["metric"] == "over_refusal_rate")
        assert entry["count"] == sum(e[label] is positive for e in rows), bench
        assert entry["labelled"] == sum(e[label] is not None for e in rows), bench


def test_bad_eval_setting_names_the_eval_key(tmp_path, capsys):
    import pytest

    from abspo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--eval.benchmarks", "[nope]"])
    assert exit_info.value.code == 2
    assert "eval.benchmarks" in capsys.readouterr().err


def test_abspo_test_evaluates_an_adapter_folder(tmp_path):
    bank, _ = tiny_bank(r=4)  # the spec of configs/tiny.yaml: r 4, alpha 8
    perturb(bank.adapter_parameters("defender"), seed=5)
    folder = bank.export("defender", tmp_path / "other" / "adapters" / "defender")
    saved = load_file(folder / "adapter_model.safetensors")
    for given in (folder, folder.parent):  # the role's folder, or the run's adapters/ folder above it
        cli = cli_main(["test", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path / "runs"),
                        "--ckpt_path", str(given), *SMALL])
        loaded = get_peft_model_state_dict(cli.model.bank.model, adapter_name="defender")
        assert loaded.keys() == saved.keys()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)
        attacker_b = [p for n, p in cli.model.bank.model.named_parameters() if "lora_B.attacker" in n]
        assert attacker_b and all(not p.any() for p in attacker_b), "only the defender is loaded"
    report = json.loads((tmp_path / "runs" / "tiny" / "eval" / "adapter-other-defender" / "report.json").read_text())
    assert report["defender"] == {"label": "adapter-other-defender", "adapter": str(folder.resolve())}
    assert eval_steps(tmp_path / "runs" / "tiny") == set(), "a foreign adapter is not a point of this run's curves"


def test_a_damaged_adapter_file_is_one_clear_line(tmp_path, capsys):
    bank, _ = tiny_bank(r=4)
    folder = bank.export("defender", tmp_path / "other" / "adapters" / "defender")
    (folder / "adapter_model.safetensors").write_bytes(b"\x00\x01 not safetensors")
    for argv in (["test", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path / "runs"),
                  "--ckpt_path", str(folder), *SMALL],
                 ["crossplay", "--out", str(tmp_path / "x"), "--base.name_or_path", "tiny-qwen2",
                  "--attackers", "[vanilla]", "--defenders", f"[{folder}]"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "is not a readable safetensors file" in err and "Traceback" not in err


@pytest.mark.parametrize(("r", "alpha", "problem"), [(2, 4.0, "wrong shape"), (4, 4.0, "lora_alpha=4.0")])
def test_abspo_test_refuses_an_adapter_of_another_spec(tmp_path, capsys, r, alpha, problem):
    base, _ = load_base(TINY)
    bank = AdapterBank(base, BankSpec(adapters={"attacker": LoraSpec(r=r, alpha=alpha), "defender": LoraSpec(r=r, alpha=alpha)}))
    folder = bank.export("defender", tmp_path / "other" / "defender")
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path / "runs"),
              "--ckpt_path", str(folder), *SMALL])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("abspo: error: --ckpt_path: ") and problem in err
    assert not (tmp_path / "runs" / "tiny" / "eval").exists(), "a refused evaluation writes no report"


@pytest.mark.parametrize("junk_kind", ["text", "torch list"])
@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_an_unreadable_checkpoint_file_is_one_clear_line(tmp_path, capsys, subcommand, junk_kind):
    junk = tmp_path / "junk.ckpt"
    if junk_kind == "text":
        junk.write_text("not a checkpoint\n")
    else:
        torch.save([1, 2], junk)  # loads with weights_only=True, but is no checkpoint
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path / "runs"),
              "--ckpt_path", str(junk)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("abspo: error: --ckpt_path: ") and ("not a readable checkpoint" in err
                                                              or "not a Lightning checkpoint" in err)
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_help_shows_the_field_docstrings(capsys):
    """Config dataclasses document their fields in their docstrings; --help must show them."""
    with pytest.raises(SystemExit):
        main(["test", "--help"])
    out = capsys.readouterr().out
    assert "New tokens per defender answer" in out  # SafetyProtocol.max_new_tokens
    assert "Run name; default: the config file's name" in out  # RunConfig.name
    with pytest.raises(SystemExit):
        main(["crossplay", "--help"])
    assert "Each 'vanilla' (seeds unchanged)" in capsys.readouterr().out  # run_crossplay's Args section


@pytest.mark.slow
def test_a_checkpoint_file_is_read_once(tmp_path, monkeypatch):
    cli_main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--trainer.max_steps", "2"])
    ckpt = tmp_path / "tiny" / "checkpoints" / "last.ckpt"
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):  # the real torch.load, counted
        reads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    cli_main(["test", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--ckpt_path", str(ckpt),
              "--eval.benchmarks", "[benign]", *SMALL])
    assert reads.count(str(ckpt)) == 1, "checked early and used later: one read"
    assert (tmp_path / "tiny" / "eval" / "step-2" / "report.json").is_file()
