"""``model.mode``: bipolicy, shared_lora and shared_full from one switch, on the tiny model through the real CLI.

What each mode promises: which parameters each role's update lands on (a role's update moves the other role only
in the shared modes: tests/test_learning.py), what a checkpoint holds (the trainable state only: LoRA tensors, or
the full policy and never its frozen reference), what an export is (a PEFT folder, or a ``from_pretrained``
folder) and that a config written for bipolicy runs in every mode unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from abspo.weights.bank import BankSpec, LoraSpec
from abspo.cli import cli_main, main
from abspo.core.config import OptimizerConfig, default_optimizers
from abspo.core.errors import ConfigError
from abspo.weights.models import load_base
from abspo.weights.modes import resolve_mode
from tests.conftest import TINY

IDS = torch.tensor([[5, 17, 256, 1024, 7, 99], [3, 3, 8, 1500, 2, 11]])
SMALL = ["--eval.limit", "2", "--eval.templates", "1", "--eval.behaviours", "2", "--eval.max_new_tokens", "8",
         "--eval.benchmarks", "[harmbench]"]


# -- resolving the switch ------------------------------------------------------------------------------------
def test_bipolicy_keeps_an_adapter_and_an_optimizer_per_role():
    bank, optimizers = resolve_mode("bipolicy", BankSpec(), default_optimizers())
    assert bank.roles == {"attacker": "attacker", "defender": "defender"}
    assert set(optimizers) == {"attacker", "defender"}


def test_shared_lora_turns_a_bipolicy_config_into_one_adapter():
    spec = LoraSpec(r=8, alpha=16)
    bank, optimizers = resolve_mode("shared_lora", BankSpec(adapters={"attacker": spec, "defender": spec}),
                                    {"attacker": OptimizerConfig(lr=2e-4), "defender": OptimizerConfig(lr=4e-4)})
    assert bank.roles == {"attacker": "shared", "defender": "shared"} and bank.adapters == {"shared": spec}
    assert optimizers == {"shared": OptimizerConfig(lr=4e-4)}, "the defender's settings"


def test_shared_full_takes_a_tenth_of_the_lora_rate_unless_told():
    _, optimizers = resolve_mode("shared_full", BankSpec(), {"attacker": OptimizerConfig(lr=2e-4),
                                                              "defender": OptimizerConfig(lr=4e-4)})
    assert optimizers["shared"].lr == pytest.approx(4e-5)
    _, optimizers = resolve_mode("shared_full", BankSpec(), {"policy": OptimizerConfig(lr=2e-4)})  # one adapter's
    assert optimizers["shared"].lr == pytest.approx(2e-5)
    _, optimizers = resolve_mode("shared_full", BankSpec(), {"shared": OptimizerConfig(lr=1e-6)})
    assert optimizers["shared"].lr == 1e-6


@pytest.mark.parametrize("mode, bank, key, words", [
    ("bipolicy", BankSpec(adapters={"s": LoraSpec()}, roles={"attacker": "s", "defender": "s"}),
     "model.bank.roles", "shared_lora"),
    ("shared_lora", BankSpec(adapters={"attacker": LoraSpec(r=4), "defender": LoraSpec(r=8)}),
     "model.bank.adapters", "different LoRA specs"),
    ("shared", BankSpec(), "model.mode", "unknown mode"),
])
def test_inconsistent_mode_and_bank_name_the_key(mode, bank, key, words):
    with pytest.raises(ConfigError) as err:
        resolve_mode(mode, bank, default_optimizers())
    assert err.value.key == key and words in str(err.value)


# -- runs through the CLI ------------------------------------------------------------------------------------
def fit(root: Path, mode: str, *extra: str):
    return cli_main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(root), "--run.name", mode,
                     "--model.mode", mode, *extra])


def _run(tmp_path_factory, mode: str):
    root = tmp_path_factory.mktemp(mode)
    return root, mode, fit(root, mode, "--trainer.max_steps", "2")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return _run(tmp_path_factory, "shared_lora")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return _run(tmp_path_factory, "shared_full")


@pytest.fixture(params=["shared_lora", "shared_full"])
def shared_run(request):
    return request.getfixturevalue("lora_run" if request.param == "shared_lora" else "full_run")


def test_a_shared_run_makes_one_optimizer_step_per_batch_and_both_roles_play(shared_run):
    _, mode, cli = shared_run
    assert cli.trainer.global_step == 2 and cli.trainer.datamodule.batches_served == 2
    assert [id(p) for p in cli.model.bank.role_parameters("attacker")] == \
        [id(p) for p in cli.model.bank.role_parameters("defender")], "one set of weights plays both roles"
    assert len(cli.trainer.optimizers) == 1
    assert set(cli.model.last_exchanges[0].turns) <= {"attacker", "defender"}


def test_shared_checkpoint_holds_the_trainable_weights_only(shared_run):
    root, mode, cli = shared_run
    ckpt = torch.load(root / mode / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    trainable = {k for k, _ in cli.model.named_parameters() if cli.model.bank.owner_of(k) is not None}
    assert trainable <= set(ckpt["state_dict"])
    assert {k for k in ckpt["state_dict"] if cli.model.bank.owner_of(k) is None} == set(), "nothing frozen is saved"
    assert ckpt["abspo"]["mode"] == mode
    if mode == "shared_full":
        assert all(k.startswith("bank.model.") for k in ckpt["state_dict"]), "the frozen reference is never saved"
        assert len(trainable) == len(list(load_base(TINY)[0].parameters()))


def test_shared_full_trains_every_weight_and_keeps_its_anchor_frozen(full_run):
    _, mode, cli = full_run
    fresh, _ = load_base(TINY)
    policy = dict(cli.model.bank.model.named_parameters())
    reference = dict(cli.model.bank.reference.named_parameters())
    moved = [n for n, p in fresh.named_parameters() if not torch.equal(policy[n], p)]
    assert len(moved) > len(policy) // 2, "most weight tensors moved"
    for name, value in fresh.named_parameters():
        assert torch.equal(reference[name], value), f"the anchor's {name} changed"


def test_shared_exports_load_with_the_standard_loaders(shared_run):
    root, mode, cli = shared_run
    for role in ("attacker", "defender"):
        folder = root / mode / "adapters" / role
        assert json.loads((folder / "abspo_role.json").read_text())["mode"] == mode
        with cli.model.bank.role(role) as model, torch.no_grad():
            expected = model(input_ids=IDS).logits
        if mode == "shared_full":
            loaded = AutoModelForCausalLM.from_pretrained(folder)
        else:
            loaded = PeftModel.from_pretrained(load_base(TINY)[0], folder)
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)


def test_resume_in_another_mode_is_refused_and_keeps_the_checkpoint(shared_run, capsys):
    root, mode, _ = shared_run
    ckpt = root / mode / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(root), "--run.name", mode,
              "--model.mode", "bipolicy", "--trainer.max_steps", "4", "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "model.mode" in err and mode in err and err.count("\n") == 1
    assert ckpt.read_bytes() == before


@pytest.mark.slow
def test_shared_full_resume_equals_uninterrupted_run(tmp_path, full_run):
    root, mode, straight = full_run
    fit(tmp_path, mode, "--trainer.max_steps", "1")
    resumed = fit(tmp_path, mode, "--trainer.max_steps", "2", "--ckpt_path", "last")
    expected, got = straight.model.bank.adapter_state_dict(), resumed.model.bank.adapter_state_dict()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_abspo_test_evaluates_a_shared_full_export_and_refuses_it_in_a_lora_mode(full_run, capsys):
    root, mode, cli = full_run
    folder = root / mode / "adapters" / "defender"
    tested = cli_main(["test", "--config", "configs/tiny.yaml", "--run.output_root", str(root), "--run.name", mode,
                       "--model.mode", mode, "--ckpt_path", str(folder), *SMALL])
    for name, value in cli.model.bank.model.named_parameters():
        assert torch.equal(dict(tested.model.bank.model.named_parameters())[name], value), name
    with pytest.raises(SystemExit):
        main(["test", "--config", "configs/tiny.yaml", "--run.output_root", str(root), "--run.name", mode,
              "--ckpt_path", str(folder), *SMALL])
    err = capsys.readouterr().err
    assert "--ckpt_path" in err and "--model.mode shared_full" in err


@pytest.mark.slow
def test_max_batches_is_one_game_budget_in_every_mode_and_the_end_is_checkpointed(tmp_path):
    for mode, steps in (("bipolicy", 6), ("shared_lora", 3)):  # tiny.yaml checkpoints every 2 steps: 3 is off-grid
        cli = fit(tmp_path, mode, "--run.max_batches", "3")
        assert cli.trainer.global_step == steps
        ckpt = torch.load(tmp_path / mode / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == steps and ckpt["SeedDataModule"]["batches_served"] == 3


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_every_mode_starts_exactly_at_its_anchor(dtype):
    """At step 0 each role computes what the anchor computes, to the bit, whatever the base dtype: a bf16
    reference beside a float32 policy would put shared_full ~1e-3 nats per token off its anchor from the start."""
    from abspo.weights.bank import AdapterBank
    from abspo.weights.full_policy import FullPolicy
    from abspo.weights.models import BaseModel

    shared = BankSpec(adapters={"shared": LoraSpec()}, roles={"attacker": "shared", "defender": "shared"})
    for mode in ("bipolicy", "shared_lora", "shared_full"):
        base, _ = load_base(BaseModel(name_or_path="tiny-qwen2", dtype=dtype))
        bank = FullPolicy(base) if mode == "shared_full" else AdapterBank(base, shared if mode == "shared_lora"
                                                                          else BankSpec())
        with torch.no_grad():
            with bank.anchor() as model:
                anchor = model(IDS).logits
            for role in ("attacker", "defender"):
                with bank.role(role) as model:
                    assert torch.equal(model(IDS).logits, anchor), (mode, role)
