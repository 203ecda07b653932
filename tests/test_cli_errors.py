"""Bad input: one clear message naming the key or file (and line) and the fix, exit status 2, nothing lost."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from abspo.cli import main

TINY = ["fit", "--config", "configs/tiny.yaml"]


def run_main(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_unknown_role_in_role_keyed_option(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--model.bank.roles",
                   '{"attacker": "attacker", "defender": "defender", "judge": "attacker"}')
    assert "model.bank.roles.judge" in err and "unknown role 'judge'" in err and "roles are" in err


def test_optimizer_for_an_unknown_adapter(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--model.optimizers",
                   '{"attacker": {"lr": 0.1}, "defender": {"lr": 0.1}, "atacker": {"lr": 0.1}}')
    assert "model.optimizers.atacker" in err and "no adapter named 'atacker'" in err


def test_missing_base_model_folder(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--model.base.name_or_path", str(tmp_path / "nope"))
    assert "model.base.name_or_path" in err and "does not exist" in err and "Fix:" in err


def test_lora_target_the_model_does_not_have(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path),
                   "--model.bank.adapters", '{"attacker": {"target_modules": ["c_attn"]}, "defender": {}}')
    assert "model.bank.adapters.attacker.target_modules" in err and "c_attn" in err and "q_proj" in err


def test_missing_seed_file(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--data.harmful", f"[{tmp_path / 'missing.jsonl'}]")
    assert "data.harmful[0]" in err and "missing.jsonl" in err and "does not exist" in err


def test_empty_seed_file(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--data.benign", f"[{empty}]")
    assert "data.benign[0]" in err and "is empty" in err


def test_malformed_jsonl_line_is_named(capsys, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "label": "harmful"}, {"prompt": "b", "label": "harmful"},
                                               '{"prompt": "c", "label": '])
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--data.harmful", f"[{bad}]")
    assert f"{bad}:3" in err and "not valid JSON" in err


def test_harmful_fraction_without_harmful_seeds(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--data.harmful", "[]")
    assert "data.harmful" in err and "no harmful seeds" in err and "harmful_fraction" in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    main([*TINY, "--run.output_root", str(root), "--trainer.max_steps", "2"])
    return root


def _resume_fails_and_keeps_checkpoint(capsys, root: Path, *args: str) -> str:
    last = root / "tiny" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    err = run_main(capsys, "--run.output_root", str(root), "--ckpt_path", "last", *args)
    assert last.read_bytes() == before, "a refused resume must not touch the checkpoint"
    return err


@pytest.mark.slow
def test_resume_with_another_rank_is_refused(capsys, finished_run):
    err = _resume_fails_and_keeps_checkpoint(capsys, finished_run, "--model.bank.adapters",
                                             '{"attacker": {"r": 8, "alpha": 8}, "defender": {"r": 4, "alpha": 8}}')
    assert "--ckpt_path" in err and "model.bank.adapters.attacker.r: checkpoint 4, this run 8" in err


def test_resume_with_another_base_is_refused(capsys, finished_run, tmp_path):
    # another base = a real HF folder of the same architecture saved under another name
    from abspo.weights.models import BaseModel, load_base

    model, tok = load_base(BaseModel("tiny-qwen2", dtype="float32", seed=1))
    model.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    err = _resume_fails_and_keeps_checkpoint(capsys, finished_run, "--model.base.name_or_path", str(tmp_path / "other"))
    assert "trained on base model 'tiny-qwen2'" in err


@pytest.mark.parametrize("key, value, shown", [("lr", "0.5", "lr: checkpoint 0.01, this run 0.5"),
                                                 ("name", "SGD", "name: checkpoint 'AdamW', this run 'SGD'")])
def test_resume_with_other_optimizer_settings_is_refused(capsys, finished_run, key, value, shown):
    """The optimizer state a resume loads keeps its own settings: another lr would be ignored, another optimizer
    would fail mid-run on the state's missing entries."""
    err = _resume_fails_and_keeps_checkpoint(capsys, finished_run, f"--model.optimizers.defender.{key}", value)
    assert "--ckpt_path" in err and f"model.optimizers.defender.{shown}" in err, err


def test_a_bad_optimizer_setting_fails_before_the_run_folder_is_touched(capsys, finished_run):
    run = finished_run / "tiny"
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    err = run_main(capsys, "--run.output_root", str(finished_run), "--ckpt_path", "last",
                   "--model.optimizers.defender.name", "Adamw")
    assert "model.optimizers.defender.name" in err and "'Adamw' is not an optimizer" in err
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_new_run_over_an_existing_checkpoint_is_refused(capsys, finished_run):
    last = finished_run / "tiny" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    err = run_main(capsys, "--run.output_root", str(finished_run))
    assert "already holds a checkpoint" in err and "--ckpt_path last" in err
    assert last.read_bytes() == before


def test_resume_without_a_checkpoint_is_an_error_not_a_silent_restart(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--ckpt_path", "last")
    assert "no checkpoint to resume" in err


@pytest.mark.slow
def test_console_script_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([str(Path(sys.executable).parent / "abspo"), *TINY, "--run.output_root", str(tmp_path),
                           "--data.benign", f"[{tmp_path / 'x.jsonl'}]"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("abspo: error: data.benign[0]")
    assert not (tmp_path / "tiny").exists(), "a refused run writes nothing"


def test_checkpoint_loads_with_weights_only(finished_run):
    torch.load(finished_run / "tiny" / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_subcommands_without_a_loop_are_not_offered(capsys, tmp_path, subcommand):
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert subcommand in err and "fit" in err and "test" in err  # argparse names the valid choices


def test_a_default_root_dir_abspo_would_not_honour_is_refused(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--trainer.default_root_dir", str(tmp_path / "scratch"))
    assert "trainer.default_root_dir" in err and f"--run.output_root {tmp_path / 'scratch'}" in err
    assert not (tmp_path / "scratch").exists() and not (tmp_path / "tiny").exists(), "nothing written"


@pytest.mark.parametrize("text, expected", [
    ("model:\n  base:\n    dtype: [float32\n", r":3: not valid YAML: while parsing a flow sequence"),  # unclosed [
    ("model:\n  base:\n  dtype: x\n   bad: 1\n", r":4: not valid YAML: mapping values are not allowed"),
    ("model:\n  algorithm:\n    kl_coeff: 0.1\n", r":3: model.algorithm.kl_coeff: unknown key. Fix: did you mean 'kl_coef'"),
    ("model:\n  algorithm:\n    estimator: grpo\n    kl_coef: lots\n",
     r":4: model.algorithm.kl_coef: wrong value: Expected a <class 'float'>. Got value: lots"),
], ids=["unclosed-bracket", "bad-indentation", "unknown-key", "wrong-type"])
def test_a_bad_config_file_is_one_line_naming_file_line_and_key(capsys, tmp_path, text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    err = run_main(capsys, "--config", str(bad), "--run.output_root", str(tmp_path / "runs"))
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"abspo: error: {bad}")
    assert re.search(expected, err), err
    assert not (tmp_path / "runs").exists(), "nothing written"


@pytest.mark.parametrize("option, suggestion", [("--trainer.max_stepz", "--trainer.max_steps"),
                                                ("--run.nmae", "--run.name")])
def test_an_unknown_option_suggests_the_closest_one(capsys, tmp_path, option, suggestion):
    err = run_main(capsys, "--run.output_root", str(tmp_path), option, "3")
    assert len(err.strip().splitlines()) == 1 and f"{option}: unknown option. Fix: did you mean '{suggestion}'" in err


def test_rollout_decoding_settings_that_cannot_work(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--model.rollout.hf.compile", "true")
    assert "model.rollout.hf.compile" in err and "Fix: set model.rollout.hf.cache: static" in err
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--model.rollout.hf.cache", "static",
                   "--model.rollout.hf.compile", "true", "--model.algorithm.old_logprobs", "sampler")
    assert "model.algorithm.old_logprobs" in err and "compiled decoding" in err and "old_logprobs: recompute" in err


@pytest.mark.parametrize("args, words", [
    (["--trainer.strategy", "abspo.strategies.FSDP2Strategy", "--model.rollout.hf.cache", "static"],
     "model.rollout.hf.cache: a static cache"),
    (["--trainer.precision", "bf16-true", "--model.algorithm.old_logprobs", "sampler"],
     "model.algorithm.old_logprobs: sampler log-probs under trainer.precision bf16-true"),
    (["--trainer.strategy", "{class_path: abspo.strategies.FSDP2Strategy, init_args: {save_distributed_checkpoint: "
      "false}}"], "trainer.strategy.init_args.save_distributed_checkpoint: FSDP2Strategy writes adapter-only"),
    (["--trainer.strategy", "abspo.strategies.FSDP2Strategy", "--model.algorithm.kl_precision", "float32"],
     "model.algorithm.kl_precision: float32 KL passes under FSDP2 are not supported yet"),
    (["--trainer.strategy", "ddpx"], "trainer.strategy: You selected an invalid strategy name"),
    (["--trainer.strategy", "abspo.strategies.FSDP2Strateg"], "trainer.strategy: 'abspo.strategies.FSDP2Strateg' "
                                                               "names no Lightning Strategy class"),
    (["--trainer.devices", "0"], "trainer.devices: `Trainer(devices='0')` value is not a valid input"),
    (["--trainer.accelerator", "gpu"], "trainer.accelerator: No supported gpu backend found. Fix: use cpu"),
], ids=["fsdp2-static-cache", "sampler-bf16", "fsdp2-one-file", "fsdp2-float32-kl", "strategy-name", "strategy-class-path", "devices", "accelerator"])
def test_a_strategy_or_precision_the_loop_cannot_run_under_writes_nothing(capsys, tmp_path, args, words):
    """Lightning's own refusals of a Trainer value are one line naming the trainer.* key too; a strategy given as a
    class path string (the first case) is the class with its defaults."""
    err = run_main(capsys, "--run.output_root", str(tmp_path), *args)
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "tiny").exists(), "refused before the config and the logger folder are written"


# -- files that cannot be read as text, folders that cannot be written, hub ids that are not there -----------------
def command_fails(capsys, *argv: str) -> str:
    """Any abspo command: exit status 2 and one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("abspo: error: "), err
    return err


@pytest.mark.parametrize("content, words", [(b"trainer:\n  max_steps: 2  # \xe9tapes\n", ":2: not UTF-8 text"),
                                            (b"# overrides go here\n", "holds no settings"),
                                            (b"- trainer\n", "holds a list, not a mapping")])
def test_a_config_file_that_holds_no_settings_is_named(capsys, tmp_path, content, words):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    for argv in ([*TINY, "--config", str(bad)], ["plan", "--config", "configs/tiny.yaml", "--config", str(bad)],
                 ["safety-report", "--config", str(bad)]):
        err = command_fails(capsys, *argv)
        assert f"{bad}" in err and words in err, err


def test_a_seed_file_that_is_not_utf8_names_its_line(capsys, tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "a", "label": "harmful"}\n{"prompt": "caf\xe9", "label": "harmful"}\n')
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--data.harmful", f"[{bad}]")
    assert f"data.harmful[0]: {bad}:2 is not UTF-8 text" in err


def test_an_output_folder_that_is_a_file_fails_before_any_work(capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    err = run_main(capsys, "--run.output_root", str(a_file))
    assert "run.output_root" in err and "which is a file" in err
    err = command_fails(capsys, "safety-report", "--out", str(a_file), "--defender", "base",
                        "--base.name_or_path", "tiny-qwen2")
    assert "--out" in err and "is a file" in err
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("argv, words", [
    (["safety-report", "--out", "x", "--protocol.limt", "2"], "--protocol.limt: unknown option. Fix: did you mean "
                                                               "'--protocol.limit'? check the spelling against abspo "
                                                               "safety-report --help"),
    (["crossplay", "--out", "x", "--attackers", "vanilla"], "attackers: wrong value"),
    (["plan", "--config", "configs/tiny.yaml", "--devices", "0"], "--devices: must be >= 1, got 0"),
    (["plan", "--config", "configs/tiny.yaml", "--micro-batch-size", "2.5"], "--micro-batch-size: '2.5' is not a whole"),
])
def test_the_other_commands_name_a_bad_option_in_one_line(capsys, argv, words):
    assert words in command_fails(capsys, *argv)


def test_plan_names_a_config_value_that_is_not_a_count(capsys, tmp_path):
    bad = tmp_path / "eight.yaml"
    bad.write_text("data: {batch_size: eight}\n")
    err = command_fails(capsys, "plan", "--config", "configs/tiny.yaml", "--config", str(bad))
    assert "data.batch_size: 'eight' is not a whole number" in err


def test_a_hub_id_that_is_not_cached_is_one_line(capsys, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network call from a test
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--model.base.name_or_path", "no-org/no-such-model")
    assert "model.base.name_or_path: could not load 'no-org/no-such-model'" in err and "Hugging Face cache" in err
    err = command_fails(capsys, "plan", "--config", "configs/tiny.yaml", "--config", str(
        write_yaml(tmp_path / "hub.yaml", "model: {base: {name_or_path: no-org/no-such-model}}\n")))
    assert "could not load 'no-org/no-such-model'" in err


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("key, value, least", [("checkpoint_every_n_steps", "-1", 1), ("max_batches", "0", 1),
                                               ("export_every_n_steps", "-2", 0), ("progress_every_n_batches", "0", 1)])
def test_a_run_setting_out_of_range_is_named(capsys, tmp_path, key, value, least):
    err = run_main(capsys, "--run.output_root", str(tmp_path), f"--run.{key}", value)
    assert f"run.{key}: must be >= {least}, got {value}" in err
    assert not (tmp_path / "tiny").exists(), "nothing written"


def test_a_bad_value_is_named_where_it_was_set(capsys, tmp_path):
    """By its whole path: the defender's lr on its own line (not the attacker's valid lr above it), the role kept
    in the key; a value given on the command line is named as the option, not as the file's valid line."""
    bad = write_yaml(tmp_path / "bad.yaml", "model:\n  optimizers:\n    attacker:\n      lr: 1.0e-3\n"
                                           "    defender:\n      lr: fast\n")
    err = command_fails(capsys, *TINY, "--config", str(bad))
    assert f"{bad}:6: model.optimizers.defender.lr: wrong value" in err, err
    err = command_fails(capsys, *TINY, "--model.optimizers.attacker.lr", "fast")
    assert "--model.optimizers.attacker.lr: wrong value" in err, err
    err = command_fails(capsys, *TINY, "--trainer.max_steps", "abc")
    assert "abspo: error: --trainer.max_steps: wrong value" in err, err


def test_an_unknown_key_of_a_trainer_section_is_named_with_its_line(capsys, tmp_path):
    typo = write_yaml(tmp_path / "typo.yaml", "# mine\ntrainer:\n  max_stepz: 3\n")
    err = command_fails(capsys, *TINY, "--config", str(typo))
    assert f"{typo}:3: trainer.max_stepz: unknown key" in err and "did you mean 'trainer.max_steps'?" in err, err


@pytest.mark.parametrize("argv, words", [(["crossply"], "unknown command 'crossply'. Fix: did you mean 'crossplay'?"),
                                         ([], "no command given")])
def test_an_unknown_command_lists_every_command(capsys, argv, words):
    err = command_fails(capsys, *argv)
    assert words in err and "fit, test, crossplay, safety-report, plan, compare" in err, err


def test_an_adapter_export_given_to_resume_says_what_it_is(capsys, finished_run):
    exported = finished_run / "tiny" / "adapters"
    err = command_fails(capsys, *TINY, "--run.output_root", str(finished_run), "--ckpt_path", str(exported))
    assert "is an adapter export (PEFT folder), not a training checkpoint" in err and "abspo test" in err, err


def test_a_damaged_adapter_config_is_named_by_safety_report(capsys, finished_run, tmp_path):
    import shutil

    damaged = tmp_path / "defender"
    shutil.copytree(finished_run / "tiny" / "adapters" / "defender", damaged)
    (damaged / "adapter_config.json").write_text("{bad")
    err = command_fails(capsys, "safety-report", "--out", str(tmp_path / "report"), "--defender", str(damaged),
                        "--base.name_or_path", "tiny-qwen2")
    assert f"cannot read {damaged / 'adapter_config.json'} (JSONDecodeError)" in err, err


def test_the_tools_name_a_missing_config_or_run_folder_in_one_line(capsys, tmp_path):
    from abspo.core.errors import one_line_errors
    from abspo.evaluation.curves import read_scalars
    from tools.param_count import count

    for call, words in ((lambda: count("configs/nope.yaml"), "--config: configs/nope.yaml does not exist"),
                        (lambda: read_scalars(tmp_path), f"run_dir: {tmp_path} has no tb/ folder")):
        with pytest.raises(SystemExit) as exit_info, one_line_errors("tool"):
            call()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(f"tool: error: {words}") and len(err.splitlines()) == 1


def test_a_judge_class_path_that_names_no_class_says_so(capsys, tmp_path):
    err = run_main(capsys, "--run.output_root", str(tmp_path), "--model.judge", "abspo.judges.HeuristicJudgee")
    assert "--model.judge: no class 'abspo.judges.HeuristicJudgee'" in err and "did you mean 'HeuristicJudge'?" in err
