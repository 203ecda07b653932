"""`abspo sft`: the label mask, that it learns, the PEFT folder it writes, its cache and its errors (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.cli import main
from abspo.game.rules import GameConfig, defender_prompt
from abspo.weights.models import load_base, load_tokenizer
from abspo.rl.rollout import generate
from abspo.training.sft import collate, encode_pair, encode_pairs, fit_adapter
from abspo.training.warm_start import Pair, warm_start_pairs
from tests.conftest import TINY

FAST = ["--base.name_or_path", "tiny-qwen2", "--base.dtype", "float32", "--limit", "6", "--max_reply_tokens", "8",
        "--epochs", "1", "--batch_size", "3", "--lr", "0.01", "--tensorboard", "false"]


def test_prompt_and_padding_positions_are_masked_and_reply_tokens_labelled(tiny_base):
    model, tok = tiny_base
    pairs = [("Hi?", "Hello there, how can I help you today?", 64),  # whole reply, then EOS
             ("How do I kill a Python process that hangs on exit?", "Use kill.", 64),
             ("Why is the sky blue?", "Because air scatters blue light more than red light, mostly.", 5)]  # cut: no EOS
    examples = [encode_pair(tok, p, r, n) for p, r, n in pairs]
    batch = collate(examples, tok.pad_token_id)
    assert len({len(e.input_ids) for e in examples}) == 3 and len({e.prompt_len for e in examples}) == 3
    width = batch["input_ids"].shape[1]
    assert width == max(len(e.input_ids) for e in examples)
    assert tok.eos_token_id == tok.pad_token_id, "SmolLM2's EOS is its pad token: the mask must not go by token id"
    for i, ((prompt, reply, n), example) in enumerate(zip(pairs, examples)):
        rendered = tok(defender_prompt(tok, GameConfig(), prompt), add_special_tokens=False)["input_ids"]
        reply_ids = tok(reply, add_special_tokens=False)["input_ids"]
        expected_reply = reply_ids[:n] if len(reply_ids) > n else [*reply_ids, tok.eos_token_id]
        assert example.input_ids == rendered + expected_reply
        assert example.prompt_len == len(rendered)
        assert example.truncated == (len(reply_ids) > n)
        length = len(example.input_ids)
        labels = batch["labels"][i].tolist()
        assert labels[:len(rendered)] == [-100] * len(rendered), "prompt tokens carry no loss"
        assert labels[len(rendered):length] == expected_reply, "every reply token (and the EOS) is a target"
        assert labels[length:] == [-100] * (width - length), "padding carries no loss"
        assert batch["attention_mask"][i].tolist() == [1] * length + [0] * (width - length)
        assert batch["input_ids"][i, :length].tolist() == example.input_ids
    # the prompt tokens are the ones the defender's turn starts from in the game's rollouts
    game_prompts = generate(model, tok, [defender_prompt(tok, GameConfig(), p) for p, _, _ in pairs], 1,
                            temperature=0.0).prompt_ids
    assert game_prompts == [e.input_ids[:e.prompt_len] for e in examples]
    # a reply the source itself cut gets no EOS either
    cut = encode_pair(tok, "Why?", "Because the sky", 64, cut_in_source=True)
    assert cut.truncated and cut.input_ids[-1] != tok.eos_token_id


def _reply_logprob(model, batch) -> float:
    """Mean log-prob per reply token, computed here from the logits (not with the module's loss)."""
    with torch.no_grad():
        logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    total, count = 0.0, 0
    for i in range(batch["input_ids"].shape[0]):
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][i, t] != -100:
                total += float(logp[i, t - 1, batch["labels"][i, t]])
                count += 1
    return total / count


def test_sft_raises_the_log_prob_of_the_replies_and_leaves_the_base_alone():
    model, tok = load_base(TINY)
    bank = AdapterBank(model, BankSpec(adapters={"defender": LoraSpec(r=8, alpha=16)},
                                       roles={"attacker": "defender", "defender": "defender"}))
    pairs, _ = warm_start_pairs()
    examples = encode_pairs(tok, pairs[:6], max_reply_tokens=10)
    batch = collate(examples, tok.pad_token_id)
    base_before = {n: p.detach().clone() for n, p in bank.base_parameters()}
    with bank.role("defender") as m:
        before = _reply_logprob(m, batch)
    module = fit_adapter(bank, "defender", examples, tok.pad_token_id, epochs=6, lr=1e-2, batch_size=3, seed=0)
    with bank.role("defender") as m:
        after = _reply_logprob(m, batch)
    assert module.steps == 12 and len(module.epoch_loss) == 6
    # a random 2-layer model's logits are nearly uniform and bounded by its small tied embeddings: 0.65 nats/token
    # is what 12 steps give here (deterministic); no training, or training the wrong positions, gives ~0
    assert after > before + 0.3, (before, after)
    assert module.epoch_loss[-1] < module.epoch_loss[0]
    assert all(torch.equal(p, base_before[n]) for n, p in bank.base_parameters()), "the frozen base changed"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "defender"
    main(["sft", "--out", str(out), *FAST])
    return out


def test_the_command_writes_a_peft_folder_that_changes_the_base(trained):
    from peft import PeftModel
    from safetensors import safe_open

    out = trained
    record = json.loads((out / "sft.json").read_text())
    assert record["rows"] == 6 and record["steps"] == 2 and len(record["epoch_loss"]) == 1
    assert record["settings"]["lr"] == 0.01 and record["data"]["used"] == 6
    assert len(record["data"]["sha256"]) == 64 and len(record["data"]["pairs_sha256"]) == 64
    assert not [p for p in out.parent.iterdir() if p.name != out.name], "no temporary folder left beside it"
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as fh:
        assert fh.keys() and all("lora_" in k for k in fh.keys()), "only adapter weights, never the base"
    base, tok = load_base(TINY)
    ids = tok([defender_prompt(tok, GameConfig(), "How do I kill a Python process?")], return_tensors="pt",
              add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        warm = PeftModel.from_pretrained(base, str(out))
        adapted = warm(input_ids=ids).logits
        with warm.disable_adapter():
            assert torch.equal(warm(input_ids=ids).logits, plain), "the base under the adapter is unchanged"
    assert (adapted - plain).abs().max() > 1e-4
    # and a self-play bank starts its defender from the folder (model.bank.adapters.defender.init_from)
    model, _ = load_base(TINY)
    bank = AdapterBank(model, BankSpec(adapters={"attacker": LoraSpec(r=8, alpha=16),
                                                 "defender": LoraSpec(r=8, alpha=16, init_from=str(out))}))
    with torch.no_grad(), bank.role("defender") as m:
        assert torch.allclose(m(input_ids=ids).logits, adapted, atol=1e-5)


def test_same_settings_are_cached_and_other_settings_are_refused(trained, capsys, monkeypatch):
    out = trained
    before = (out / "sft.json").read_bytes(), (out / "sft.json").stat().st_mtime_ns
    capsys.readouterr()

    def no_training(*_args, **_kwargs):
        raise AssertionError("a cached call must not load the model or train")

    monkeypatch.setattr("abspo.training.sft.load_base", no_training)
    monkeypatch.setattr("abspo.training.sft.fit_adapter", no_training)
    main(["sft", "--out", str(out), *FAST])
    assert "cached" in capsys.readouterr().out
    assert ((out / "sft.json").read_bytes(), (out / "sft.json").stat().st_mtime_ns) == before
    for flag, value in (("--lr", "0.02"), ("--max_reply_tokens", "9")):
        with pytest.raises(SystemExit) as exit_info:
            main(["sft", "--out", str(out), *FAST, flag, value])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"abspo: error: {flag}: "), err
        assert "--overwrite true" in err[0]
    assert (out / "sft.json").read_bytes() == before[0]


def test_bad_values_and_foreign_folders_are_one_line_errors(tmp_path, capsys):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    for argv, key in ((["--epochs", "0"], "--epochs"), (["--lr", "-1"], "--lr"), (["--role", "attacker"], "--role"),
                      (["--out", str(foreign)], "--out"),
                      (["--epoch", "1"], "--epoch")):  # a shortened flag is an error, never read as --epochs
        with pytest.raises(SystemExit) as exit_info:
            main(["sft", "--out", str(tmp_path / "x"), *FAST, *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"abspo: error: {key}: "), err
    assert (foreign / "keep.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


def test_a_run_that_dies_leaves_no_folder(tmp_path, monkeypatch):
    from abspo.training.sft import run_sft

    def dies(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("abspo.training.sft.fit_adapter", dies)
    with pytest.raises(KeyboardInterrupt):
        run_sft(str(tmp_path / "out"), base=TINY, limit=3, max_reply_tokens=4, tensorboard=True)
    assert list(tmp_path.iterdir()) == []


def test_pairs_keep_their_source_cut_flag():
    tok = load_tokenizer(TINY)
    pair = Pair("Hi?", "It was a long story that went on and on and", False, "compliance", "x", cut=True)
    (example,) = encode_pairs(tok, [pair], max_reply_tokens=64)
    assert example.truncated and example.input_ids[-1] != tok.eos_token_id
