"""Roles started from existing adapters (``init_from``) and the anchor choice (``model.anchor: base | initial``).

A warm-started role sits away from the base at step 0. Under ``anchor: initial`` its KL anchor is a frozen copy of
its starting adapter in the same bank: the KL is exactly 0 at step 0, a flat reward pulls a moved role back to
where it started, and the frozen copy never changes and is never written into a checkpoint. Under ``anchor: base``
(the paper's) the anchor stays the base, and pulls toward it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from abspo.weights.bank import INITIAL_SUFFIX, AdapterBank, BankSpec, LoraSpec
from abspo.cli import cli_main, main
from abspo.core.config import AlgorithmConfig, OptimizerConfig
from abspo.core.errors import ConfigError
from abspo.game.rules import Exchange, GameConfig
from abspo.weights.models import load_base
from abspo.training.module import SelfPlayModule
from abspo.rl.rollout import build_scoring_batch, generate
from abspo.training.update import role_samples
from tests.conftest import TINY, perturb

R, ALPHA = 4, 8  # configs/tiny.yaml's LoRA spec
PROMPTS = [f"Tell me about item {i}." + " Please." * (i % 3) for i in range(6)]  # varied lengths


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 256, 1024, 7, 99], [8, 9, 10, 11, 12, 13]])


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """A defender adapter trained elsewhere (random non-zero weights), exported as a standard PEFT folder."""
    base, _ = load_base(TINY)
    spec = BankSpec(adapters={r: LoraSpec(r=R, alpha=ALPHA) for r in ("attacker", "defender")})
    bank = AdapterBank(base, spec)
    perturb(bank.role_parameters("defender"), seed=3, scale=0.05)
    return bank.export("defender", tmp_path_factory.mktemp("start") / "defender")


def warm_bank(start: Path, anchor: str = "initial", **lora) -> AdapterBank:
    base, _ = load_base(TINY)
    spec = BankSpec(adapters={"attacker": LoraSpec(r=R, alpha=ALPHA),
                              "defender": LoraSpec(**({"r": R, "alpha": ALPHA} | lora), init_from=str(start))})
    return AdapterBank(base, spec, anchor=anchor)


def start_logits(start: Path) -> torch.Tensor:
    base, _ = load_base(TINY)
    return logits(PeftModel.from_pretrained(base, start), IDS)


def test_a_role_starts_from_its_adapter_and_the_other_from_zero(start):
    bank = warm_bank(start, anchor="base")
    with bank.use(None) as m:
        base = logits(m, IDS)
    with bank.role("defender") as m:
        torch.testing.assert_close(logits(m, IDS), start_logits(start), rtol=0, atol=1e-6)
    with bank.role("attacker") as m:
        assert torch.equal(logits(m, IDS), base), "the attacker has no init_from: it starts at the base"
    with bank.anchor("defender") as m:
        assert torch.equal(logits(m, IDS), base), "anchor: base is the base, warm start or not"
    assert not bank.frozen, "anchor: base keeps no frozen copy"


def test_anchor_initial_is_a_frozen_copy_of_the_start_outside_the_trainable_state(start):
    bank = warm_bank(start, anchor="initial")
    frozen = "defender" + INITIAL_SUFFIX
    assert bank.anchors == {"defender": frozen} and set(bank.frozen) == {frozen}
    with bank.anchor("defender") as m:
        torch.testing.assert_close(logits(m, IDS), start_logits(start), rtol=0, atol=1e-6)
    with bank.use(None) as m:
        base = logits(m, IDS)
    with bank.anchor("attacker") as m:
        assert torch.equal(logits(m, IDS), base), "a role that starts from zero is anchored to the base"
    copies = bank.frozen_parameters(frozen)
    assert copies and not any(p.requires_grad for p in copies)
    trainable = {id(p) for a in ("attacker", "defender") for p in bank.adapter_parameters(a)}
    assert not trainable & {id(p) for p in copies}
    assert not any(INITIAL_SUFFIX in k for k in bank.adapter_state_dict()), "not part of the trainable state"
    # moving the trainable defender leaves its anchor where it started
    perturb(bank.role_parameters("defender"), seed=9, scale=0.1)
    with bank.anchor("defender") as m:
        torch.testing.assert_close(logits(m, IDS), start_logits(start), rtol=0, atol=1e-6)
    with bank.role("defender") as m:
        assert not torch.allclose(logits(m, IDS), start_logits(start), atol=1e-4)


@pytest.mark.parametrize("change,needle", [
    ({"r": 8}, "wrong shape"),
    ({"alpha": 4}, "lora_alpha"),
    ({"target_modules": ["q_proj", "v_proj"]}, "modules"),
])
def test_a_mismatched_adapter_is_refused_naming_the_key(start, change, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        warm_bank(start, **change)
    assert err.value.key == "model.bank.adapters.defender.init_from"


def test_a_missing_folder_or_a_pickled_adapter_is_refused(start, tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as err:
        warm_bank(tmp_path / "nope")
    assert err.value.key == "model.bank.adapters.defender.init_from"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((start / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ConfigError, match="pickled"):
        warm_bank(pickled)


# -- through the module: the KL and its pull -------------------------------------------------------------------
def module(start: Path | None, anchor: str, algorithm: AlgorithmConfig | None = None, lr: float = 1e-2
           ) -> SelfPlayModule:
    lora = {"r": R, "alpha": ALPHA}
    bank = BankSpec(adapters={"attacker": LoraSpec(**lora),
                              "defender": LoraSpec(**lora, init_from=str(start) if start else None)})
    return SelfPlayModule(base=TINY, bank=bank, optimizers={r: OptimizerConfig(lr=lr) for r in ("attacker", "defender")},
                          game=GameConfig(temperature=1.0), algorithm=algorithm or AlgorithmConfig(), anchor=anchor)


def played(m: SelfPlayModule, role: str, seed: int = 0) -> list[Exchange]:
    torch.manual_seed(seed)
    with m.bank.role(role) as model:
        gen = generate(model, m.tokenizer, PROMPTS, 5, temperature=1.0)
    out = []
    for i, (p, c) in enumerate(zip(gen.prompt_ids, gen.completion_ids)):
        e = Exchange(seed=PROMPTS[i], seed_harmful=True, revised=True, group=i)
        e.turns[role] = (p, c)
        e.rewards[role] = 0.0  # flat
        out.append(e)
    return out


@pytest.mark.parametrize("anchor,warm,zero_kl", [("initial", True, True), ("base", False, True), ("base", True, False)])
def test_the_kl_at_step_zero(start, anchor, warm, zero_kl):
    """0 exactly wherever a role starts at its anchor; a warm start anchored to the base starts away from it."""
    m = module(start if warm else None, anchor)
    samples = role_samples("defender", played(m, "defender"))
    old, ref, mask = m.updater.reference_logprobs("defender", samples)
    assert mask.sum() > 0
    if zero_kl:
        assert torch.equal(old * mask, ref * mask)
    else:
        assert ((old - ref).abs() * mask).sum() > 1e-3


def first_token_kl(m: SelfPlayModule, role: str) -> float:
    """KL(role || the role's anchor) of the first completion token, averaged over the prompts."""
    ids = [m.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    batch = build_scoring_batch(ids, [[0]] * len(ids), m.pad_id)
    dists = []
    for context in (m.bank.role(role), m.bank.anchor(role)):
        with context as model, torch.no_grad():
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids).logits[:, -2].float()
        dists.append(out.log_softmax(-1))
    p, q = dists
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("anchor,lr", [("initial", 3e-2), ("base", 3e-3)])
def test_a_flat_reward_pulls_a_moved_role_back_to_its_anchor(start, anchor, lr):
    """initial: the role is moved off its start first, and pulled back to it. base: the warm start itself is the
    move, and the pull is toward the base, away from the warm start (why a warm start wants anchor: initial)."""
    m = module(start, anchor, AlgorithmConfig(kl_mode="loss_k3", kl_coef=1.0), lr=lr)
    if anchor == "initial":
        perturb(m.bank.role_parameters("defender"), seed=11, scale=0.05)
    kls = [first_token_kl(m, "defender")]
    assert kls[0] > 1e-3
    for i in range(10):
        m.learn(played(m, "defender", seed=i), i)
        kls.append(first_token_kl(m, "defender"))
    assert kls[-1] < 0.6 * kls[0], f"KL to the {anchor} anchor under a flat reward: {[round(k, 5) for k in kls]}"
    frozen = m.bank.frozen_parameters("defender" + INITIAL_SUFFIX) if anchor == "initial" else []
    for name, p in zip([n for n, _ in m.bank.model.named_parameters() if INITIAL_SUFFIX in n], frozen):
        assert torch.equal(p, m.bank.initial_value(name, tuple(p.shape))), "the frozen start never moves"


# -- shared modes ---------------------------------------------------------------------------------------------
def test_the_shared_modes_start_where_the_defender_starts(start):
    expected = start_logits(start)
    for mode in ("shared_lora", "shared_full"):
        lora = {"r": R, "alpha": ALPHA}
        bank = BankSpec(adapters={"attacker": LoraSpec(**lora), "defender": LoraSpec(**lora, init_from=str(start))})
        m = SelfPlayModule(base=TINY, bank=bank, optimizers={"defender": OptimizerConfig(lr=1e-3)}, mode=mode,
                           anchor="initial")
        for role in ("attacker", "defender"):
            with m.bank.role(role) as model:
                torch.testing.assert_close(logits(model, IDS), expected, rtol=0, atol=1e-4, msg=f"{mode} {role}")
        with m.bank.anchor("defender") as model:
            torch.testing.assert_close(logits(model, IDS), expected, rtol=0, atol=1e-4, msg=f"{mode} anchor")
        assert set(m.checkpoint_signature()["initial"].values()) == {
            m.bank.initial_sources[next(iter(m.bank.initial_sources))]["sha256"]}


def test_a_shared_mode_refuses_a_start_for_the_attacker_alone(start):
    bank = BankSpec(adapters={"attacker": LoraSpec(r=R, alpha=ALPHA, init_from=str(start)),
                              "defender": LoraSpec(r=R, alpha=ALPHA)})
    with pytest.raises(ConfigError) as err:
        SelfPlayModule(base=TINY, bank=bank, optimizers={"defender": OptimizerConfig(lr=1e-3)}, mode="shared_lora")
    assert err.value.key == "model.bank.adapters.attacker.init_from"


# -- end to end through the CLI --------------------------------------------------------------------------------
def fit(root: Path, start: Path, *extra: str):
    return cli_main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(root),
                     "--model.bank.adapters.defender.init_from", str(start), "--model.anchor", "initial", *extra])


def trainable(cli) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in cli.model.bank.adapter_state_dict().items()}


@pytest.mark.slow
def test_a_warm_started_run_trains_resumes_exactly_and_never_saves_the_frozen_start(start, tmp_path):
    straight = fit(tmp_path / "a", start)
    bank = straight.model.bank
    frozen = "defender" + INITIAL_SUFFIX
    names = [n for n, _ in bank.model.named_parameters() if bank._adapter_of(n) == frozen]
    for name, p in zip(names, bank.frozen_parameters(frozen)):
        assert torch.equal(p, bank.initial_value(name, tuple(p.shape))), "bit-identical after training"
    moved = trainable(straight)
    initial = {n.replace(frozen, "defender"): bank.initial_value(n, ()) for n in names}
    assert any(not torch.equal(moved[n], initial[n]) for n in initial), "the defender trained"

    ckpt = torch.load(tmp_path / "a" / "tiny" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(INITIAL_SUFFIX in k for k in ckpt["state_dict"]), "the frozen start is not saved"
    assert ckpt["abspo"]["anchor"] == "initial" and set(ckpt["abspo"]["initial"]) == {"defender"}

    fit(tmp_path / "b", start, "--trainer.max_steps", "2")
    resumed = fit(tmp_path / "b", start, "--trainer.max_steps", "4", "--ckpt_path", "last")
    assert resumed.trainer.global_step == 4
    got = trainable(resumed)
    for name in moved:
        torch.testing.assert_close(got[name], moved[name], rtol=0, atol=1e-6, msg=name)

    exported = tmp_path / "a" / "tiny" / "adapters" / "defender"
    base, _ = load_base(TINY)
    with bank.role("defender") as m:
        torch.testing.assert_close(logits(PeftModel.from_pretrained(base, exported), IDS), logits(m, IDS),
                                   rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_resume_from_another_start_or_anchor_is_refused(start, tmp_path, capsys):
    fit(tmp_path, start, "--trainer.max_steps", "2")
    other = AdapterBank(load_base(TINY)[0], BankSpec(adapters={r: LoraSpec(r=R, alpha=ALPHA)
                                                               for r in ("attacker", "defender")}))
    perturb(other.role_parameters("defender"), seed=5, scale=0.05)
    elsewhere = other.export("defender", tmp_path / "other")
    for extra in ((), ("--model.anchor", "base")):
        with pytest.raises(SystemExit) as code:
            main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path),
                      "--model.bank.adapters.defender.init_from", str(elsewhere if not extra else start),
                      "--model.anchor", "initial", *extra, "--trainer.max_steps", "4", "--ckpt_path", "last"])
        assert code.value.code == 2
        err = capsys.readouterr().err
        assert "abspo: error:" in err and ("init_from" in err or "model.anchor" in err), err
