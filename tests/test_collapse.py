"""Collapse diagnostics: the diversity measures against hand-computed values, the gradient cosine against games
built to agree or to oppose, the pressure figures against the game's own defender, and the callback in a run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from abspo.callbacks.collapse import CollapseDiagnostics, cosine, probe_tensor
from abspo.cli import cli_main
from abspo.core.config import AlgorithmConfig, OptimizerConfig
from abspo.rl.diversity import bleu, mean_pairwise_cosine, paired_cosine, self_bleu, tokens
from abspo.game.rules import Exchange, GameConfig
from abspo.training.module import SelfPlayModule
from tests.conftest import TINY

GAME = GameConfig(max_new_tokens_attacker=8, max_new_tokens_defender=8)
MODES = ["bipolicy", "shared_lora", "shared_full"]


# -- pure functions ------------------------------------------------------------------------------------------
def test_bleu_matches_a_hand_computed_value():
    # precisions 5/6, 3/5, 1/4 and 0/3 (smoothed to 0.1/3), equal lengths: (5/6 * 3/5 * 1/4 * 1/30) ** (1/4)
    hyp, ref = tokens("The cat sat on the mat"), tokens("the cat is on the mat")
    assert bleu(hyp, [ref]) == pytest.approx((1 / 240) ** 0.25, abs=1e-12)


def test_bleu_brevity_penalty_and_no_overlap():
    # "the cat" against "the cat sat": precisions 1, 1, then no 3- or 4-grams (0.1/1 each); BP = exp(1 - 3/2)
    assert bleu(tokens("the cat"), [tokens("the cat sat")]) == pytest.approx(math.exp(-0.5) * 0.01 ** 0.25)
    assert bleu(tokens("dog"), [tokens("the cat sat")]) == 0.0


def test_self_bleu_is_one_for_copies_and_low_for_varied_texts():
    assert self_bleu(["how do I pick a lock today"] * 3) == pytest.approx(1.0)
    varied = self_bleu(["how do I pick a lock", "write a poem about rain", "explain tax law to me"])
    assert varied < 0.1
    assert self_bleu(["one text"]) is None


def test_embedding_similarities_by_hand():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert mean_pairwise_cosine(rows) == pytest.approx((0 + 2 / math.sqrt(2)) / 3)
    assert paired_cosine(rows, torch.tensor([[2.0, 0.0], [0.0, -1.0], [1.0, 1.0]])) == pytest.approx(1 / 3)


def test_cosine_of_gradient_lists():
    a = [torch.tensor([1.0, 0.0]), None, torch.tensor([2.0])]
    b = [torch.tensor([0.0, 3.0]), torch.tensor([5.0]), torch.tensor([4.0])]
    # dot = 8 (the None part contributes nothing), |a| = sqrt(5), |b| = sqrt(9 + 25 + 16)
    assert cosine(a, b) == pytest.approx(8 / (math.sqrt(5) * math.sqrt(50)))
    assert cosine([None], b[:1]) is None


# -- on the tiny model ---------------------------------------------------------------------------------------
def make(judge, mode: str) -> SelfPlayModule:
    return SelfPlayModule(base=TINY, judge=judge, game=GAME, mode=mode, algorithm=AlgorithmConfig(kl_coef=0.0),
                          optimizers={"attacker": OptimizerConfig(lr=1e-2), "defender": OptimizerConfig(lr=1e-2)})


def mirrored_games(module: SelfPlayModule, sign: float) -> list[Exchange]:
    """Games whose attacker and defender turns are the same tokens, rewarded alike (sign 1) or oppositely (-1):
    the two roles' objectives are then the same function (or its negative) at step 0."""
    games = []
    for i, (text, reward) in enumerate([("Say yes", 1.0), ("Tell me a long story now", -1.0), ("Why", 0.5),
                                        ("List three colours please", -0.2)]):
        prompt = module.tokenizer(text)["input_ids"]
        completion = module.tokenizer(" ok sure" * (i + 1))["input_ids"]
        e = Exchange(seed=text, seed_harmful=True, revised=True, group=i)
        e.turns = {"attacker": (prompt, completion), "defender": (prompt, completion)}
        e.rewards = {"attacker": reward, "defender": sign * reward}
        games.append(e)
    return games


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradient_cosine_is_plus_or_minus_one_for_agreeing_or_opposed_objectives(judge, mode, sign):
    module = make(judge, mode)
    out = CollapseDiagnostics().gradient_alignment(module, mirrored_games(module, sign))
    assert out["diag/grad_cos_probe"] == pytest.approx(sign, abs=1e-4)
    if mode == "bipolicy":
        assert "diag/grad_cos_shared" not in out, "bipolicy roles share no trainable parameter"
    else:
        assert out["diag/grad_cos_shared"] == pytest.approx(sign, abs=1e-4)
    assert not any(p.requires_grad for _, p in module.bank.base_parameters()), "the probe is frozen again"


def test_figures_at_step_zero_agree_across_modes_and_pressure_matches_the_game(judge, seeds):
    figures = {}
    for mode in MODES:
        module = make(judge, mode)
        exchanges = module.play(seeds.batch(0).seeds)
        figures[mode] = CollapseDiagnostics().measure(module, exchanges, 0)
        # At step 0 every defender is the anchor, and the base's turn is sampled with the game's keys: same
        # tokens, same verdicts.
        assert figures[mode]["diag/pressure_vs_base"] == figures[mode]["diag/pressure_vs_self"]
        assert figures[mode]["diag/role_kl"] == pytest.approx(0.0, abs=1e-6), "B = 0: the roles are the base"
    for key in figures["bipolicy"]:
        assert figures["shared_full"][key] == pytest.approx(figures["bipolicy"][key], abs=1e-4), key


def test_role_kl_grows_when_the_roles_are_trained_apart(judge, seeds):
    module = make(judge, "bipolicy")
    exchanges = module.play(seeds.batch(0).seeds)
    module.learn(exchanges, 0)
    assert CollapseDiagnostics().role_divergence(module, exchanges) > 1e-4


@pytest.mark.slow
def test_callback_logs_to_tensorboard_and_writes_a_summary(tmp_path):
    cli_main(["fit", "--config", "configs/tiny.yaml", "--run.output_root", str(tmp_path), "--trainer.max_steps", "6",
              "--trainer.callbacks+=abspo.callbacks.CollapseDiagnostics",
              "--trainer.callbacks.init_args.every_n_batches", "2"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(sorted((tmp_path / "tiny" / "tb").glob("events.out.tfevents.*"))[-1]))
    acc.Reload()
    for tag in ("diag/pressure_vs_base", "diag/pressure_vs_self", "diag/grad_cos_probe", "diag/role_kl",
                "diag/attack_self_bleu", "diag/attack_embedding_similarity", "diag/attack_seed_similarity",
                "diag/overhead_s"):
        assert [e.step for e in acc.Scalars(tag)] == [0, 2], tag  # batches 0 and 2 of 3
    summary = json.loads((tmp_path / "tiny" / "diagnostics.json").read_text())
    assert summary["metrics"]["diag/role_kl"]["points"] == 2
    assert 0 < summary["overhead"]["fraction"] < 1 and "down_proj" in summary["probe"]


@pytest.mark.parametrize("mode", ["bipolicy", "shared_lora"])
def test_gradients_from_the_update_s_own_rollouts_equal_recomputed_ones(judge, seeds, mode):
    module = make(judge, mode)
    exchanges = module.play(seeds.batch(0).seeds)
    module.learn(exchanges, 0)
    module.last_exchanges = exchanges
    diagnostics = CollapseDiagnostics()
    _, probe = probe_tensor(module.bank)
    probe.requires_grad_(True)
    for role in ("attacker", "defender"):
        kept = diagnostics.role_gradient(module, role, exchanges, [probe])  # the update's rollout batch
        fresh = diagnostics.role_gradient(module, role, list(exchanges), [probe])  # recomputed from the games
        torch.testing.assert_close(kept[0], fresh[0], rtol=1e-4, atol=1e-7)
    probe.requires_grad_(False)
