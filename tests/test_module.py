"""The training step outside a Trainer, on the tiny model: schedules, the shared baseline, GRPO, accumulation."""

from __future__ import annotations

import pytest
import torch

from abspo.weights.bank import ROLES, BankSpec, LoraSpec
from abspo.core.config import AlgorithmConfig, OptimizerConfig, ScheduleConfig
from abspo.game.rules import GameConfig
from abspo.training.module import SelfPlayModule
from abspo.training.play import game_metrics
from tests.conftest import TINY

GAME = GameConfig(max_new_tokens_attacker=8, max_new_tokens_defender=8)


def make(judge, **kwargs) -> SelfPlayModule:
    kwargs.setdefault("optimizers", {"attacker": OptimizerConfig(lr=1e-2), "defender": OptimizerConfig(lr=1e-2)})
    kwargs.setdefault("base", TINY)
    kwargs.setdefault("game", GAME)
    return SelfPlayModule(judge=judge, **kwargs)


def snapshot(module: SelfPlayModule, adapter: str) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.bank.adapter_parameters(adapter)]


def changed(before: list[torch.Tensor], module: SelfPlayModule, adapter: str) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.bank.adapter_parameters(adapter)))


def step(module: SelfPlayModule, seeds, index: int, roles: list[str] | None = None):
    """Play batch ``index`` and update through the module's own entry point (``roles=[]``: play only)."""
    module.sampler.reset()
    torch.manual_seed(index)
    exchanges = module.play(seeds.batch(index).seeds)
    if roles == []:
        return exchanges, {}
    return exchanges, module.learn(exchanges, index)


def test_play_fills_every_exchange(judge, seeds):
    module = make(judge)
    exchanges, _ = step(module, seeds, 0, roles=[])
    assert len(exchanges) == 8
    revised = [e for e in exchanges if e.revised]
    assert len(revised) == 4, "unrevised_fraction 0.5 of 8 seeds"
    for e in exchanges:
        assert e.verdict is not None and "defender" in e.turns
        assert ("defender" in e.rewards) == e.verdict.complete, "exactly the unlabelled games get no reward"
        assert ("attacker" in e.rewards) == (e.revised and e.verdict.complete)
        if not e.revised:
            assert e.prompt == e.seed and e.attacker_output is None
    metrics = game_metrics(exchanges)
    assert metrics["game/unlabelled_rate"] == sum(not e.verdict.complete for e in exchanges) / 8
    assert 0.0 <= metrics["game/attack_success_rate"] <= 1.0


def test_a_forfeit_is_not_counted_as_unlabelled():
    """A forfeited game is never judged (its attacker is paid the table's minimum): the unlabelled rate is of the
    exchanges sent to the judge, as the unlabelled guard counts them."""
    from abspo.game.rules import Exchange
    from abspo.judges.base import Verdict
    from abspo.training.play import judge_counts

    def game(verdict, played=True, **kw):
        e = Exchange(seed="s", seed_harmful=True, revised=True, group=0, verdict=verdict, **kw)
        if played:
            e.turns["defender"] = ([1], [2])
        return e

    exchanges = [game(Verdict(True, True, False)), game(Verdict(True, False, True)), game(Verdict(None, None, None)),
                 game(None, played=False, forfeited=True)]
    metrics = game_metrics(exchanges)
    assert judge_counts(exchanges) == (3, 1)
    assert metrics["game/unlabelled_rate"] == pytest.approx(1 / 3) and metrics["game/unlabelled"] == 1.0
    assert metrics["game/attacker_forfeit_rate"] == 0.25


def test_phases_schedule_freezes_the_opponent(judge, seeds):
    module = make(judge, schedule=ScheduleConfig(mode="phases", phase_steps=1))
    att, dfn = snapshot(module, "attacker"), snapshot(module, "defender")
    step(module, seeds, 0)  # phase 0: attacker only
    assert changed(att, module, "attacker") and not changed(dfn, module, "defender")
    att = snapshot(module, "attacker")
    step(module, seeds, 1)  # phase 1: defender only
    assert changed(dfn, module, "defender") and not changed(att, module, "attacker")


def test_shared_adapter_is_updated_once_from_both_roles(judge, seeds):
    bank = BankSpec(adapters={"shared": LoraSpec(r=4, alpha=8)}, roles={"attacker": "shared", "defender": "shared"})
    module = make(judge, bank=bank, optimizers={"shared": OptimizerConfig(lr=1e-2)}, mode="shared_lora")
    optimizers, _ = module.configure_optimizers()
    assert len(optimizers) == 1
    before = snapshot(module, "shared")
    exchanges, stats = step(module, seeds, 0)
    assert changed(before, module, "shared")
    expected = sum(len(e.rewards) for e in exchanges)
    assert stats["attacker/defender/samples"] == expected > 8, "attacker and defender turns in one update"


def test_accumulation_steps_every_k_batches(judge, seeds):
    module = make(judge, algorithm=AlgorithmConfig(accumulate_batches=2))
    before = snapshot(module, "defender")
    step(module, seeds, 0)
    assert not changed(before, module, "defender"), "first of two accumulated batches: no optimizer step"
    assert any(p.grad is not None for p in module.bank.adapter_parameters("defender"))
    step(module, seeds, 1)
    assert changed(before, module, "defender")
    assert all(p.grad is None for p in module.bank.adapter_parameters("defender")), "grads cleared after the step"


def test_grpo_plays_group_size_games_per_seed(judge, seeds):
    module = make(judge, algorithm=AlgorithmConfig(estimator="grpo", group_size=4))
    before = snapshot(module, "defender")
    exchanges, stats = step(module, seeds, 0)
    assert len(exchanges) == 32
    groups = [e.group for e in exchanges]
    assert groups == [i // 4 for i in range(32)]
    assert all(exchanges[i].seed == exchanges[i + 1].seed for i in range(0, 32, 2))
    assert len({tuple(e.turns["defender"][1]) for e in exchanges if "defender" in e.turns}) > 8, \
        "the games of a group are sampled with their own keys"
    assert stats["defender/samples"] == sum("defender" in e.rewards for e in exchanges) > 16
    varied = {e.group for e in exchanges if "defender" in e.rewards} - {
        g for g in set(groups) if len({e.rewards.get("defender") for e in exchanges if e.group == g}) == 1}
    assert varied, "some group's rewards differ (else GRPO has nothing to learn from)"
    assert changed(before, module, "defender"), "the GRPO advantages moved the defender"


@pytest.mark.parametrize("algorithm", [AlgorithmConfig(kl_mode="loss_k3", kl_coef=0.1),
                                       AlgorithmConfig(update_epochs=2, clip_eps=0.1, micro_batch_size=3)])
def test_update_variants_move_the_defender_and_report_finite_stats(judge, seeds, algorithm):
    module = make(judge, algorithm=algorithm)
    before = snapshot(module, "defender")
    _, stats = step(module, seeds, 0)
    assert changed(before, module, "defender")
    for key, value in stats.items():
        assert torch.isfinite(torch.tensor(value)), key


def test_kl_to_the_anchor_grows_from_zero(judge, seeds):
    module = make(judge)
    _, first = step(module, seeds, 0)
    assert first["defender/kl"] == pytest.approx(0.0, abs=1e-6), "fresh adapters are the anchor"
    _, second = step(module, seeds, 1)
    assert second["defender/kl"] > 0.0


def test_unrevised_share_is_taken_from_harmful_and_benign_seeds_alike():
    from abspo.game.seeds import Seed
    from abspo.training.play import unrevised_seeds

    seeds = [Seed("h1", True), Seed("b1", False), Seed("h2", True), Seed("h3", True), Seed("b2", False), Seed("h4", True)]
    assert unrevised_seeds(seeds, 0.5) == {0, 2, 1}  # 2 of 4 harmful (h1, h2), 1 of 2 benign (b1)
    assert unrevised_seeds(seeds, 0.0) == set()
    assert unrevised_seeds(seeds, 1.0) == set(range(6))


def test_optimizer_steps_per_batch_matches_the_schedule(judge):
    assert make(judge).optimizer_steps_per_batch == 2.0, "alternate: attacker step + defender step"
    assert make(judge, schedule=ScheduleConfig(mode="phases")).optimizer_steps_per_batch == 1.0
    assert make(judge, algorithm=AlgorithmConfig(accumulate_batches=2)).optimizer_steps_per_batch == 1.0
    shared = BankSpec(adapters={"shared": LoraSpec(r=4)}, roles={"attacker": "shared", "defender": "shared"})
    assert make(judge, bank=shared, optimizers={"shared": OptimizerConfig()},
                mode="shared_lora").optimizer_steps_per_batch == 1.0


# -- the update path's fixes, each with the bug it guards against -----------------------------------------------
def scored_exchanges(module: SelfPlayModule, lengths: dict[str, list[int]], rewards: list[float]) -> list:
    """Exchanges with hand-made turns of the given completion lengths per role (no generation, no judge)."""
    from abspo.game.rules import Exchange

    g = torch.Generator().manual_seed(0)
    out = []
    for i, reward in enumerate(rewards):
        e = Exchange(seed="s", seed_harmful=True, revised=True, group=i)
        for role, ls in lengths.items():
            prompt = torch.randint(10, 1000, (5 + 3 * i,), generator=g).tolist()  # prompts of varied lengths
            e.turns[role] = (prompt, torch.randint(10, 1000, (ls[i],), generator=g).tolist())
            e.rewards[role] = reward
        out.append(e)
    return out


def test_shared_adapter_update_mixes_roles_of_unequal_lengths_in_one_micro_batch(judge):
    bank = BankSpec(adapters={"shared": LoraSpec(r=4, alpha=8)}, roles={"attacker": "shared", "defender": "shared"})
    module = make(judge, bank=bank, optimizers={"shared": OptimizerConfig(lr=1e-2)}, mode="shared_lora",
                  algorithm=AlgorithmConfig(micro_batch_size=8))
    exchanges = scored_exchanges(module, {"attacker": [4, 2, 3, 4], "defender": [12, 7, 1, 9]}, [1.0, -1.0, 0.5, 0.0])
    before = snapshot(module, "shared")
    stats = module.learn(exchanges, 0)  # used to fail: "stack expects each tensor to be equal size, [4] and [12]"
    assert stats["attacker/defender/samples"] == 8.0
    assert changed(before, module, "shared")
    assert set(stats) >= {"attacker/kl", "defender/kl"}, "each role keeps its own KL figure on a shared adapter"


def test_a_micro_batch_holds_one_roles_rows_longest_first(judge):
    """A micro-batch pads to its longest prompt plus its longest completion: a shared adapter's micro-batches hold
    one role each (a defender's long prompt never pads an attacker's long rewrite), rows sorted longest first,
    the largest micro-batch first."""
    module = make(judge, algorithm=AlgorithmConfig(micro_batch_size=2))
    # (prompt, completion) lengths: totals interleave across the roles
    rows = {0: ("defender", 30, 2), 1: ("attacker", 10, 25), 2: ("defender", 28, 1), 3: ("attacker", 8, 24),
            4: ("defender", 20, 3), 5: ("attacker", 9, 2)}
    prompts = [[5] * p for _, p, _ in rows.values()]
    completions = [[6] * c for _, _, c in rows.values()]
    roles = [r for r, _, _ in rows.values()]
    apart = module.updater.micro_batch_rows(prompts, completions, roles)
    assert apart == [[1, 3], [0, 2], [4], [5]]
    padded = lambda chunks: sum(len(c) * (max(len(prompts[i]) for i in c) + max(len(completions[i]) for i in c))  # noqa: E731
                                for c in chunks)
    together = module.updater.micro_batch_rows(prompts, completions)
    assert together == [[1, 0], [3, 2], [4, 5]], "without roles: by length only"
    assert (padded(apart), padded(together)) == (168, 260)


@pytest.mark.parametrize("estimator", ["reinforce_pp", "grpo"])
def test_a_token_cap_cuts_the_micro_batches_and_changes_no_update(judge, estimator):
    """``micro_batch_tokens`` only re-cuts the rows: the loss weights each micro-batch by its tokens, so the
    update equals one without the cap (float32 sums in another order: ~1e-7)."""
    lengths = {"attacker": [4, 2, 9, 4, 1, 6], "defender": [12, 7, 1, 9, 3, 5]}
    sgd = {"attacker": OptimizerConfig(name="SGD", lr=10.0), "defender": OptimizerConfig(name="SGD", lr=10.0)}
    after, cuts = {}, {}
    for cap in (None, 45):
        torch.manual_seed(0)
        module = make(judge, optimizers=sgd, algorithm=AlgorithmConfig(
            estimator=estimator, group_size=2, micro_batch_size=8, micro_batch_tokens=cap, max_grad_norm=None))
        exchanges = scored_exchanges(module, lengths, [1.0, -1.0, 0.5, 0.0, -0.5, 2.0])
        for e in exchanges:
            e.group = e.group // 2
        cut = module.updater.micro_batch_rows
        module.updater.micro_batch_rows = lambda *a, _cut=cut, _cap=cap: cuts.setdefault(_cap, []).append(_cut(*a)) or _cut(*a)
        before = {a: snapshot(module, a) for a in ("attacker", "defender")}
        module.learn(exchanges, 0)
        assert all(changed(before[a], module, a) for a in before)
        after[cap] = {a: snapshot(module, a) for a in before}
    assert max(len(c) for c in cuts[None]) <= 2 and min(len(c) for c in cuts[45]) >= 4, "the cap re-cuts the rows"
    assert any(len(rows) > 1 for cut in cuts[45] for rows in cut), "and keeps short rows together"
    for adapter, params in after[None].items():
        for capped, plain in zip(after[45][adapter], params):
            torch.testing.assert_close(capped, plain, atol=2e-6, rtol=1e-5)


def test_update_epochs_step_once_per_pass_and_the_clip_acts(judge):
    exchanges = None
    params = {}
    for epochs in (1, 2):
        module = make(judge, algorithm=AlgorithmConfig(update_epochs=epochs, clip_eps=0.05, max_grad_norm=None),
                      optimizers={"attacker": OptimizerConfig(name="SGD", lr=50.0),
                                  "defender": OptimizerConfig(name="SGD", lr=50.0)})
        exchanges = exchanges or scored_exchanges(module, {"defender": [3, 5, 2, 6]}, [1.0, -1.0, 2.0, 0.0])
        torch.manual_seed(0)
        stats = module.learn(exchanges, 0)
        params[epochs] = snapshot(module, "defender")
        _, scheds = module._standalone_optimizers
        assert scheds[1].last_epoch == epochs, "one optimizer (and scheduler) step per pass"
        if epochs == 2:
            assert stats["defender/clip_frac"] > 0.0, "the second pass sees moved weights: the ratio leaves the clip range"
    assert any(not torch.equal(a, b) for a, b in zip(params[1], params[2])), "a second pass is not a no-op"


def test_update_epochs_count_as_optimizer_steps(judge):
    assert make(judge, algorithm=AlgorithmConfig(update_epochs=3)).optimizer_steps_per_batch == 6.0


def test_gradient_pass_keeps_the_base_in_eval_mode(judge):
    module = make(judge)
    seen = []
    layer = module.bank.model.get_base_model().model.layers[0]
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(m.training))
    try:
        module.learn(scored_exchanges(module, {"defender": [3, 4]}, [1.0, -1.0]), 0)
    finally:
        handle.remove()
    assert seen and not any(seen), "no base dropout while scoring or updating"


def test_schedule_first_sets_the_update_order_in_alternate_mode(judge):
    from abspo.core.config import ScheduleConfig

    for first in ("attacker", "defender"):
        module = make(judge, schedule=ScheduleConfig(first=first))
        stats = module.learn(scored_exchanges(module, {"attacker": [2, 3], "defender": [3, 2]}, [1.0, -1.0]), 0)
        assert next(iter(stats)).startswith(first)


def test_accumulated_gradients_survive_a_checkpoint(judge):
    algorithm = AlgorithmConfig(accumulate_batches=2)
    a = make(judge, algorithm=algorithm)
    first = scored_exchanges(a, {"defender": [3, 5]}, [1.0, -1.0])
    second = scored_exchanges(a, {"defender": [4, 2]}, [-1.0, 1.0])
    a.learn(first, 0)
    checkpoint = {"state_dict": a.state_dict()}
    a.on_save_checkpoint(checkpoint)
    b = make(judge, algorithm=algorithm)
    b.on_load_checkpoint(checkpoint)
    b.load_state_dict(checkpoint["state_dict"], strict=False)
    for m in (a, b):
        m._standalone_optimizers = None
        m.learn(second, 1)  # the second batch of two: the step, on the sum of both batches
    for pa, pb in zip(a.bank.adapter_parameters("defender"), b.bank.adapter_parameters("defender")):
        torch.testing.assert_close(pa, pb)
    assert a.bank.adapter_parameters("defender")[1].abs().sum() > 0, "the step happened"


@pytest.mark.parametrize("game, key", [(GameConfig(temperature=0.0), "model.game.temperature"),
                                       (GameConfig(top_p=0.9), "model.game.top_p")])
def test_samplers_the_update_cannot_score_are_refused(judge, game, key):
    from abspo.core.errors import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        SelfPlayModule(base=TINY, judge=judge, game=game)


def test_lora_dropout_with_several_update_epochs_is_refused(judge):
    """RL review (e): old log-probs without dropout, gradient passes with it: the first ratio is not 1."""
    from abspo.core.errors import ConfigError
    from abspo.weights.bank import BankSpec, LoraSpec

    bank = BankSpec(adapters={"attacker": LoraSpec(r=4), "defender": LoraSpec(r=4, dropout=0.1)})
    with pytest.raises(ConfigError, match=r"model\.bank\.adapters\.defender\.dropout.*update_epochs=2"):
        make(judge, bank=bank, algorithm=AlgorithmConfig(update_epochs=2))
    make(judge, bank=bank, algorithm=AlgorithmConfig(update_epochs=1))  # one epoch: old = this pass's, ratio 1


def test_phases_must_hold_whole_accumulation_cycles(judge):
    from abspo.core.config import ScheduleConfig
    from abspo.core.errors import ConfigError

    with pytest.raises(ConfigError, match="phase_steps"):
        make(judge, schedule=ScheduleConfig(mode="phases", phase_steps=3), algorithm=AlgorithmConfig(accumulate_batches=2))


def test_activation_checkpointing_recomputes_layers_and_leaves_the_update_unchanged(judge, seeds):
    """The same games through a checkpointed and a plain module: equal adapters after the update, while the
    checkpointed one ran its attention blocks again in backward (the recomputation that saves the memory)."""
    torch.manual_seed(0)
    plain = make(judge)
    torch.manual_seed(0)
    ckpt = make(judge, algorithm=AlgorithmConfig(activation_checkpointing=True))
    games = plain.play(seeds.batch(0).seeds)
    calls = {"plain": 0, "ckpt": 0}
    for name, module in (("plain", plain), ("ckpt", ckpt)):
        attention = module.bank.model.get_base_model().model.layers[0].self_attn

        def count(*_, name=name):
            calls[name] += 1

        attention.register_forward_hook(count)
        module.learn(games, 0)
    assert calls["ckpt"] > calls["plain"], "no recomputation: checkpointing did not act"
    a, b = plain.bank.adapter_state_dict(), ckpt.bank.adapter_state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert not ckpt.bank.model.get_base_model().model.layers[0].self_attn.training, "sub-modules stay in eval mode"


# -- the lean update: no pass it does not need, the same gradient ------------------------------------------------
LEAN = [AlgorithmConfig(kl_mode="loss_k3", kl_coef=0.1),
        AlgorithmConfig(estimator="grpo", group_size=2, kl_coef=0.1),
        AlgorithmConfig(estimator="grpo", group_size=2, kl_mode="loss_k3", kl_coef=0.1)]


def role_gradient(module: SelfPlayModule, exchanges, role: str) -> tuple[list[torch.Tensor], dict]:
    """The defender's gradient and stats from one rollout batch and gradient pass (no optimizer step)."""
    rollout = module.updater.rollout_batch([role], exchanges)
    stats = {**rollout.stats, **module.updater.gradient_pass([role], rollout)}
    grads = [p.grad.clone() for p in module.bank.adapter_parameters(role)]
    for p in module.bank.adapter_parameters(role):
        p.grad = None
    return grads, stats


@pytest.mark.parametrize("algorithm", LEAN, ids=["reinforce_pp-loss_k3", "grpo-reward_k1", "grpo-loss_k3"])
def test_the_update_without_an_old_logprob_pass_equals_the_one_with_it(judge, monkeypatch, algorithm):
    """With one epoch the old log-probs are the gradient pass's own: skipping their pass (and, for GRPO, adding
    the k1 penalty in the gradient pass) changes neither the gradient nor the KL figure, only the passes run."""
    from tests.conftest import perturb

    module = make(judge, algorithm=algorithm)
    perturb(module.bank.adapter_parameters("defender"), seed=3, scale=0.05)  # a role away from its anchor
    exchanges = scored_exchanges(module, {"defender": [6, 2, 9, 4, 1, 7]}, [1.0, -1.0, 0.5, 0.0, 2.0, -0.5])
    assert module.old_logprobs_source == "gradient_pass"
    lean, lean_stats = role_gradient(module, exchanges, "defender")
    assert "score/old" not in module.clock.take(), "no separate forward for the old log-probs"
    monkeypatch.setattr(SelfPlayModule, "old_logprobs_source", property(lambda self: "recompute"))
    full, full_stats = role_gradient(module, exchanges, "defender")
    assert "score/old" in module.clock.take()
    assert full_stats["defender/kl"] > 1e-4, "the perturbed role is away from the anchor"
    assert lean_stats["defender/kl"] == pytest.approx(full_stats["defender/kl"], rel=1e-5)
    assert lean_stats["loss"] == pytest.approx(full_stats["loss"], rel=1e-5, abs=1e-7)
    for a, b in zip(lean, full):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", ["bipolicy", "shared_lora"])
def test_the_update_logs_the_same_figures_whichever_pass_gives_the_old_logprobs(judge, mode):
    """``<role>/kl`` per role and the adapter's figures under the adapter's name, whether the old log-probs come
    from a pass of their own or from the gradient pass (which then measures the KL): dashboards and
    ``tools/plot_run.py`` read these keys."""
    adapter = "/".join(ROLES) if mode == "shared_lora" else None
    keys = {}
    for algorithm in [AlgorithmConfig(kl_coef=0.1), *LEAN]:
        module = make(judge, algorithm=algorithm, mode=mode)
        exchanges = scored_exchanges(module, {"attacker": [3, 5, 2, 4], "defender": [6, 2, 9, 4]},
                                     [1.0, -1.0, 0.5, 0.0])
        stats = module.learn(exchanges, 0)
        keys[module.old_logprobs_source] = set(stats)
        for role in ROLES:
            assert f"{role}/kl" in stats, (module.old_logprobs_source, sorted(stats))
            assert stats[f"{adapter or role}/samples"] == (8 if adapter else 4)
    assert keys.keys() == {"recompute", "gradient_pass"}
    assert keys["recompute"] == keys["gradient_pass"]


def test_sampler_logprobs_stand_in_for_a_recompute_in_float32(judge, seeds):
    """``old_logprobs: sampler`` skips the old pass and gives the recompute's gradient up to the sampler's
    rounding (float32: ~1e-5 per token)."""
    module = make(judge, algorithm=AlgorithmConfig(old_logprobs="sampler", kl_coef=0.5))
    from tests.conftest import perturb

    perturb(module.bank.adapter_parameters("defender"), seed=4, scale=0.05)
    _, _ = step(module, seeds, 0, roles=[])
    exchanges = module.play(seeds.batch(1).seeds, batch_index=1)
    assert all(len(e.sampled_logprobs["defender"]) == len(e.turns["defender"][1]) for e in exchanges
               if "defender" in e.turns)
    module.clock.take()
    lean, lean_stats = role_gradient(module, exchanges, "defender")
    assert "score/old" not in module.clock.take()
    module.algorithm.old_logprobs = "recompute"
    full, full_stats = role_gradient(module, exchanges, "defender")
    assert lean_stats["defender/kl"] == pytest.approx(full_stats["defender/kl"], rel=1e-3)
    for a, b in zip(lean, full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)


def test_sampler_logprobs_are_refused_where_they_would_be_wrong(judge):
    from abspo.core.errors import ConfigError
    from abspo.weights.models import BaseModel

    with pytest.raises(ConfigError, match="model.algorithm.old_logprobs"):  # the PPO ratio needs the exact ones
        make(judge, algorithm=AlgorithmConfig(old_logprobs="sampler", update_epochs=2))
    with pytest.raises(ConfigError, match="float32"):  # bf16 sampler log-probs are off by ~0.04 per token
        make(judge, base=BaseModel(name_or_path="tiny-qwen2", dtype="bfloat16"),
             algorithm=AlgorithmConfig(old_logprobs="sampler"))


@pytest.mark.parametrize("algorithm", [AlgorithmConfig(kl_coef=0.1), LEAN[1]], ids=["reinforce_pp", "grpo"])
def test_the_gradient_does_not_depend_on_the_micro_batch_size(judge, algorithm):
    """Rows of very different lengths, sorted and cut into micro-batches of 1, 3 or all: one gradient."""
    from tests.conftest import perturb

    grads = []
    for mb in (1, 3, 16):
        algorithm.micro_batch_size = mb
        module = make(judge, algorithm=algorithm)
        perturb(module.bank.adapter_parameters("defender"), seed=5, scale=0.05)
        exchanges = scored_exchanges(module, {"defender": [11, 1, 5, 2, 8, 3, 14]},
                                     [1.0, -1.0, 0.5, 0.0, 2.0, -0.5, 1.5])
        grads.append(role_gradient(module, exchanges, "defender")[0])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_a_prompt_longer_than_the_context_is_cut_and_counted_or_refused(judge, seeds, caplog):
    """tiny-qwen2 has a context of 2048 tokens: a 3000-token seed is cut from its middle by default (the template's
    start and the generation prompt kept, counted) and stops the run with overlong_prompts: error."""
    import logging

    from abspo.game.seeds import Seed
    from abspo.core.errors import ConfigError

    long_seed = Seed(prompt="Tell me " + "very " * 3000 + "much about bridges.", harmful=False)
    batch = [long_seed, *seeds.batch(0).seeds[1:4]]
    module = make(judge, game=GameConfig(max_new_tokens_attacker=8, max_new_tokens_defender=8, unrevised_fraction=1.0))
    with caplog.at_level(logging.WARNING, logger="abspo.training.module"):
        exchanges = module.play(batch)
    assert module.sampler.truncated == 1 and "1 defender prompts were cut" in caplog.text
    prompt_ids, completion = exchanges[0].turns["defender"]
    assert len(prompt_ids) + 8 <= 2048 and completion
    assert module.tokenizer.decode(prompt_ids).rstrip().endswith("assistant"), "the generation prompt is kept"
    strict = make(judge, game=GameConfig(max_new_tokens_attacker=8, max_new_tokens_defender=8, unrevised_fraction=1.0,
                                         overlong_prompts="error"))
    with pytest.raises(ConfigError, match=r"model.game.overlong_prompts: a defender prompt of \d+ tokens"):
        strict.play(batch)


def test_a_tokenizer_without_a_chat_template_is_named(judge, tmp_path):
    """A base (non-chat) model's folder: one ConfigError naming the key and the fallback, unless it is asked for."""
    from abspo.core.errors import ConfigError
    from abspo.weights.models import BaseModel, load_base

    model, tokenizer = load_base(TINY)
    model.save_pretrained(tmp_path)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    base = BaseModel(name_or_path=str(tmp_path), dtype="float32")
    with pytest.raises(ConfigError, match="model.base.name_or_path: the tokenizer of .* has no chat template.*"
                                          "plain_chat_fallback: true"):
        make(judge, base=base)
    module = make(judge, base=base, game=GameConfig(plain_chat_fallback=True, max_new_tokens_defender=4))
    assert "User: hi\nAssistant: " in defender_prompt_text(module, "hi")


def defender_prompt_text(module, prompt: str) -> str:
    from abspo.game.rules import defender_prompt

    return defender_prompt(module.tokenizer, module.game, prompt)


@pytest.mark.slow
def test_static_cache_and_compiled_decoding_play_the_games_of_plain_decoding(judge, seeds):
    """model.rollout.hf reaches generate: the same batch played through a static cache with compiled decoding
    (aot_eager: dynamo's graphs and guards) gives every attacker and defender turn of plain decoding."""
    from torch._dynamo.utils import counters

    from abspo.rl.rollout import DecodingConfig
    from abspo.training.vllm_rollouts import RolloutConfig
    from tests.conftest import perturb

    torch._dynamo.reset()
    fast = RolloutConfig(hf=DecodingConfig(cache="static", compile=True, compile_backend="aot_eager"))
    modules = [make(judge), make(judge, rollout=fast)]
    for module in modules:
        perturb(module.bank.role_parameters("attacker"), 1, scale=3.0)
        perturb(module.bank.role_parameters("defender"), 2, scale=3.0)
    before = counters["stats"]["unique_graphs"]
    plain, compiled = ([(e.attacker_output, e.defender_output) for e in m.play(seeds.batch(0).seeds[:4])]
                       for m in modules)
    assert counters["stats"]["unique_graphs"] > before, "the rollouts went through the compiled forward"
    assert compiled == plain and any(a for a, _ in plain) and all(d for _, d in plain)
    torch._dynamo.reset()


def test_fsdp2_refuses_a_static_cache(judge):
    """Lockstep generation (synced_gpus) with a static cache is untested: refused at setup, before any step."""
    from lightning.pytorch import Trainer

    from abspo.core.errors import ConfigError
    from abspo.rl.rollout import DecodingConfig
    from abspo.strategies import FSDP2Strategy
    from abspo.training.vllm_rollouts import RolloutConfig

    module = make(judge, rollout=RolloutConfig(hf=DecodingConfig(cache="static")))
    module.trainer = Trainer(accelerator="cpu", devices=1, strategy=FSDP2Strategy(), logger=False,
                             enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"model\.rollout\.hf\.cache: .*Fix: use model\.rollout\.hf\.cache: dynamic"):
        module.setup("fit")
