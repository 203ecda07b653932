"""End to end on the tiny Qwen2-architecture model through the real CLI: what `abspo fit` promises.

After a run: the frozen base is bit-identical, both adapters moved and differ from each other, the
exported PEFT folders reproduce each role's logits, checkpoints hold no base weights, and resuming a run
gives exactly the adapters of an uninterrupted run (same step count, optimizer state, data position).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from abspo.cli import cli_main
from abspo.weights.models import load_base
from tests.conftest import TINY

IDS = torch.tensor([[5, 17, 256, 1024, 7, 99]])


def fit(root: Path, *extra: str):
    args = ["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(root), *extra]
    return cli_main(args)


def adapters(cli) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in cli.model.bank.adapter_state_dict().items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, fit(root)


def test_base_is_bit_identical_after_training(run):
    _, cli = run
    fresh, _ = load_base(TINY)
    trained = dict(cli.model.bank.base_parameters())
    reference = {f"base_model.model.{k}": v for k, v in fresh.named_parameters()}
    renamed = {k.replace(".base_layer.", "."): v for k, v in trained.items()}
    assert renamed.keys() == reference.keys()
    for name, value in renamed.items():
        assert torch.equal(value, reference[name]), f"base parameter {name} changed"


def test_both_adapters_moved_and_differ(run):
    _, cli = run
    bank = cli.model.bank
    lora_b = {r: [p for n, p in bank.model.named_parameters() if ".lora_B." + r + "." in n] for r in ("attacker", "defender")}
    for role, params in lora_b.items():
        assert any(p.abs().sum() > 0 for p in params), f"{role} LoRA B is still zero: the role never updated"
    state = bank.adapter_state_dict()
    a = torch.cat([v.flatten() for k, v in state.items() if ".attacker." in k])
    d = torch.cat([v.flatten() for k, v in state.items() if ".defender." in k])
    assert not torch.allclose(a, d)
    assert cli.trainer.global_step == 4, "max_steps counts optimizer steps: 2 batches x 2 roles"


def test_exported_adapters_reproduce_role_logits(run):
    root, cli = run
    for role in ("attacker", "defender"):
        folder = root / "tiny" / "adapters" / role
        with cli.model.bank.role(role) as model, torch.no_grad():
            expected = model(input_ids=IDS).logits
        fresh, _ = load_base(TINY)
        loaded = PeftModel.from_pretrained(fresh, folder)
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-5)


def test_checkpoint_holds_adapters_not_the_base(run):
    root, cli = run
    path = root / "tiny" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    keys = set(ckpt["state_dict"])
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    base_numel = sum(p.numel() for _, p in cli.model.bank.base_parameters())
    saved_numel = sum(v.numel() for v in ckpt["state_dict"].values())
    assert saved_numel < base_numel / 10
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    assert ckpt["SeedDataModule"]["batches_served"] == 2


def test_tensorboard_has_per_role_and_game_scalars(run):
    root, _ = run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((root / "tiny" / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[-1]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for role in ("attacker", "defender"):
        for stat in ("reward", "loss", "kl", "entropy", "grad_norm"):
            assert f"{role}/{stat}" in tags
    for tag in ("game/attack_success_rate", "game/benign_refusal_rate", "game/attacker_format_failure_rate",
                "game/unlabelled_rate", "perf/gen_tokens_per_s"):
        assert tag in tags
    assert "games/text_summary" in acc.Tags()["tensors"]


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path, run):
    _, straight = run  # 4 optimizer steps in one go
    fit(tmp_path, "--trainer.max_steps", "2")
    resumed = fit(tmp_path, "--trainer.max_steps", "4", "--ckpt_path", "last")
    assert resumed.trainer.global_step == 4
    opt_steps = [o.state[o.param_groups[0]["params"][0]]["step"].item() for o in resumed.trainer.optimizers]
    assert opt_steps == [2, 2], "each role's optimizer continued from its saved state"
    expected, got = adapters(straight), adapters(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run_and_last_names_the_new_one(tmp_path):
    """``--run.overwrite true`` over a finished run: one ``last.ckpt`` (the new run's, not a ``last-v1.ckpt``
    beside the old), fresh curves, a resume with the new run's settings; a file of the user's is kept."""
    run_dir = tmp_path / "tiny"
    fit(tmp_path, "--trainer.max_steps", "4")
    from abspo.core.run_folder import RUN_OUTPUTS

    assert {p.name for p in run_dir.iterdir()} <= set(RUN_OUTPUTS), "overwrite knows every output"
    (run_dir / "notes.txt").write_text("mine")
    wider = ("--model.bank.adapters.defender.r", "8")  # a setting the old checkpoint cannot be resumed with
    fit(tmp_path, "--run.overwrite", "true", "--trainer.max_steps", "2", *wider)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1, "the old run's curves are gone"
    assert (run_dir / "notes.txt").read_text() == "mine"
    resumed = fit(tmp_path, "--trainer.max_steps", "4", "--ckpt_path", "last", *wider)
    assert resumed.trainer.global_step == 4


@pytest.mark.slow
def test_periodic_exports_fall_on_multiples_of_n_from_the_start_and_after_a_resume(tmp_path, monkeypatch):
    from abspo.callbacks.export import AdapterExport

    steps: list[int] = []
    real_export = AdapterExport.export

    def recording(self, trainer, module):
        if self._last_step != trainer.global_step:
            steps.append(trainer.global_step)
        real_export(self, trainer, module)

    monkeypatch.setattr(AdapterExport, "export", recording)
    fit(tmp_path, "--run.export_every_n_steps", "6", "--trainer.max_steps", "6")  # batches end at steps 2, 4, 6
    assert steps == [6], "not after the first batch"
    fit(tmp_path, "--run.export_every_n_steps", "6", "--trainer.max_steps", "10", "--ckpt_path", "last")
    assert steps == [6, 10], "a resume at step 6 exports next at 12 or at the end, not after its first batch"


def test_progress_bar_counts_batches_of_games(tmp_path, monkeypatch):
    monkeypatch.setattr("abspo.callbacks.progress.output_is_terminal", lambda: True)  # (not a log file: a bar)
    cli = fit(tmp_path, "--trainer.enable_progress_bar", "true", "--trainer.max_steps", "2")
    bar = cli.trainer.progress_bar_callback
    assert type(bar).__name__.startswith("Game")
    assert cli.trainer.global_step == 2
    cli.trainer.fit_loop.epoch_loop.max_steps = 6  # 4 optimizer steps left = 2 batches of (attacker step + defender step)
    assert bar.total_train_batches == 2


@pytest.mark.slow
def test_bf16_mixed_precision_trains_and_refuses_sampler_logprobs(tmp_path):
    """``trainer.precision: bf16-mixed`` (autocast over the whole step, docs/performance.md) trains; the sampler's
    log-probs, off by bf16 rounding, are refused under it with the key to change."""
    from abspo.core.errors import ConfigError

    cli = fit(tmp_path, "--trainer.precision", "bf16-mixed", "--model.base.dtype", "bfloat16")
    state = adapters(cli)
    moved = [k for k, v in state.items() if "lora_B" in k and v.abs().sum() > 0]
    assert moved and all(torch.isfinite(v).all() for v in state.values())
    with pytest.raises(ConfigError, match="model.algorithm.old_logprobs.*bf16-mixed"):
        fit(tmp_path / "sampler", "--trainer.precision", "bf16-mixed", "--model.algorithm.old_logprobs", "sampler")
