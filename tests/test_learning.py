"""Learning direction: a reward for a behaviour makes that behaviour more likely, through the module's own update.

The game's rewards come from a judge and are noisy; these tests replace the game with a bandit whose answer is
known. Each round samples completions from one role (the real ``generate``), pays +1 for every occurrence of a
chosen *target* token, and calls ``SelfPlayModule.learn`` — the entry point ``training_step`` uses. The
probability of the target as the first completion token is read exactly (a softmax, no sampling) before and
after. A flipped reward sign, a dead optimizer step, an update routed to the wrong adapter or a KL placed with
the wrong sign each fail here.

The tiny random model's next-token distribution is nearly uniform over 49k tokens, so no token would ever be
sampled twice. Its final norm is scaled up (a sharper softmax, same residual stream) until one token holds a few
percent of the mass: rare enough to learn, common enough to be sampled.
"""

from __future__ import annotations

import pytest
import torch

from abspo.weights.bank import BankSpec, LoraSpec
from abspo.core.config import AlgorithmConfig, OptimizerConfig
from abspo.game.rules import Exchange, GameConfig
from abspo.training.module import SelfPlayModule
from abspo.rl.rollout import build_scoring_batch, generate
from tests.conftest import TINY

PROMPTS = [f"Question {i}: what is {i * 7} plus {i}?" + " Think." * (i % 3) for i in range(8)]  # varied lengths
SHARPEN = 13.0
MAX_NEW = 3


def make(algorithm: AlgorithmConfig | None = None, mode: str = "bipolicy", lr: float = 3e-3,
         temperature: float = 1.0) -> SelfPlayModule:
    if mode == "bipolicy":
        bank = BankSpec(adapters={r: LoraSpec(r=8, alpha=16) for r in ("attacker", "defender")})
        optimizers = {r: OptimizerConfig(lr=lr) for r in ("attacker", "defender")}
    else:
        bank = BankSpec(adapters={"shared": LoraSpec(r=8, alpha=16)}, roles={"attacker": "shared", "defender": "shared"})
        optimizers = {"shared": OptimizerConfig(lr=lr if mode == "shared_lora" else lr / 10)}
    module = SelfPlayModule(base=TINY, bank=bank, optimizers=optimizers, game=GameConfig(temperature=temperature),
                            algorithm=algorithm or AlgorithmConfig(), mode=mode)
    with module.bank.anchor() as anchor:
        models = [module.bank.model, anchor]  # one model in the LoRA modes, the policy and its reference in full
    norms = {}
    for model in models:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        norms[id(base.model.norm.weight)] = base.model.norm.weight
    with torch.no_grad():
        for weight in norms.values():
            weight.mul_(SHARPEN)
    return module


def prompt_ids(module: SelfPlayModule) -> list[list[int]]:
    return [module.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


@torch.no_grad()
def first_token_probs(module: SelfPlayModule, role: str | None) -> torch.Tensor:
    """[prompts, vocab] distribution of the first completion token under ``role`` (None: the anchor), laid out
    exactly as generation and scoring lay it out."""
    ids = prompt_ids(module)
    batch = build_scoring_batch(ids, [[0]] * len(ids), module.pad_id)
    context = module.bank.anchor() if role is None else module.bank.role(role)
    with context as model:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits[:, -2].float()
    return (logits / module.game.temperature).softmax(-1)


def target_token(module: SelfPlayModule) -> int:
    """The anchor's most likely first token, averaged over the prompts (a few percent of the mass)."""
    return int(first_token_probs(module, None).mean(0).argmax())


def p_target(module: SelfPlayModule, role: str, target: int) -> float:
    return float(first_token_probs(module, role)[:, target].mean())


def first_token_kl(module: SelfPlayModule, role: str) -> float:
    """Exact KL(role || anchor) of the first-token distributions, averaged over the prompts."""
    p, q = first_token_probs(module, role), first_token_probs(module, None)
    return float((p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log())).sum(-1).mean())


def bandit_round(module: SelfPlayModule, roles: list[str], target: int, index: int, sign: float = 1.0) -> dict:
    """Sample every prompt as each role (group_size times), pay ``sign`` per target token, and learn."""
    k = module.algorithm.group_size
    exchanges = []
    torch.manual_seed(1000 + index)
    for role in roles:
        with module.bank.role(role) as model:
            gen = generate(model, module.tokenizer, [p for p in PROMPTS for _ in range(k)], MAX_NEW,
                           temperature=module.game.temperature,
                           return_logprobs=module.old_logprobs_source == "sampler")
        for i, (p, c) in enumerate(zip(gen.prompt_ids, gen.completion_ids)):
            e = Exchange(seed=PROMPTS[i // k], seed_harmful=True, revised=True, group=i // k)
            e.turns[role] = (p, c)
            if gen.sampled_logprobs is not None:
                e.sampled_logprobs[role] = gen.sampled_logprobs[i]
            e.rewards[role] = sign * float(sum(t == target for t in c))
            exchanges.append(e)
    return module.learn(exchanges, index)


def train(module: SelfPlayModule, roles: list[str], rounds: int = 5, sign: float = 1.0) -> tuple[int, dict, list]:
    target = target_token(module)
    before = {r: p_target(module, r, target) for r in ("attacker", "defender")}
    stats = [bandit_round(module, roles, target, i, sign) for i in range(rounds)]
    after = {r: p_target(module, r, target) for r in ("attacker", "defender")}
    return target, {r: (before[r], after[r]) for r in before}, stats


ALGORITHMS = {
    "reinforce_pp": AlgorithmConfig(),
    "reinforce_pp-loss_k3": AlgorithmConfig(kl_mode="loss_k3"),
    "reinforce_pp-sampler_old_logprobs": AlgorithmConfig(old_logprobs="sampler"),
    "reinforce_pp-epochs2": AlgorithmConfig(update_epochs=2, clip_eps=0.2, micro_batch_size=3),
    "grpo": AlgorithmConfig(estimator="grpo", group_size=4),
    "grpo-loss_k3-epochs2": AlgorithmConfig(estimator="grpo", group_size=4, kl_mode="loss_k3", update_epochs=2),
    "rloo": AlgorithmConfig(estimator="rloo", group_size=4),
    "rloo-loss_k3-epochs2": AlgorithmConfig(estimator="rloo", group_size=4, kl_mode="loss_k3", update_epochs=2),
}


@pytest.mark.parametrize("role", ["attacker", "defender"])
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_rewarded_token_becomes_more_likely_for_the_role_that_learns_only(name, role):
    # The same step budget per batch: update_epochs passes make that many Adam steps, and at lr 3e-3 the second
    # step of a 2-epoch batch overshot on this tiny model (P(target) 0.17 after the first, 0.06 after the second).
    module = make(ALGORITHMS[name], lr=3e-3 / ALGORITHMS[name].update_epochs)
    other = "defender" if role == "attacker" else "attacker"
    _, p, _ = train(module, [role])
    before, after = p[role]
    assert after > before + 0.05, f"{name}: P(target) for the {role} went {before:.4f} -> {after:.4f}"
    assert p[other][1] == pytest.approx(p[other][0], abs=1e-7), f"the {other}'s adapter must not move"


def test_a_penalised_token_becomes_less_likely():
    module = make()
    _, p, _ = train(module, ["defender"], sign=-1.0)
    before, after = p["defender"]
    assert after < before * 0.8, f"P(target) {before:.4f} -> {after:.4f} under a penalty"


@pytest.mark.parametrize("mode", ["shared_lora", "shared_full"])
def test_shared_policy_learns_from_both_roles_games(mode):
    module = make(mode=mode)
    _, p, stats = train(module, ["attacker", "defender"])
    for role in ("attacker", "defender"):  # one adapter: both roles move, and together
        assert p[role][1] > p[role][0] + 0.05
    assert p["attacker"] == pytest.approx(p["defender"])
    assert all(s["attacker/defender/samples"] == 2 * len(PROMPTS) for s in stats)


def test_sampling_temperature_below_one_is_learnt_on_policy():
    module = make(AlgorithmConfig(update_epochs=2), temperature=0.7)
    _, p, stats = train(module, ["defender"])
    assert p["defender"][1] > p["defender"][0] + 0.05
    # first pass of the first round: the stored log-probs are the ones sampled with, so the ratio starts at 1
    assert stats[0]["defender/kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kl_mode", ["reward_k1", "loss_k3"])
def test_kl_anchor_pulls_a_role_back_when_the_reward_is_flat(kl_mode):
    module = make(AlgorithmConfig(kl_mode=kl_mode, kl_coef=0.0))
    target, p, _ = train(module, ["defender"])  # move away from the anchor first, unanchored
    assert p["defender"][1] > p["defender"][0] + 0.05
    module.algorithm.kl_coef = 1.0
    kls = [first_token_kl(module, "defender")]
    for i in range(8):
        bandit_round(module, ["defender"], target, 10 + i, sign=0.0)
        kls.append(first_token_kl(module, "defender"))
    assert kls[-1] < 0.5 * kls[0], f"KL to the anchor under a flat reward: {[round(k, 4) for k in kls]}"
    assert p_target(module, "defender", target) < p["defender"][1], "pulled back toward the anchor's probability"


@pytest.mark.parametrize("mode", ["bipolicy", "shared_lora", "shared_full"])
def test_an_attacker_update_moves_the_defender_only_when_they_share_weights(mode):
    module = make(mode=mode)
    before = [p.detach().clone() for p in module.bank.role_parameters("defender")]
    _, p, _ = train(module, ["attacker"], rounds=3)
    assert p["attacker"][1] > p["attacker"][0] + 0.05
    same = all(torch.equal(a, b) for a, b in zip(before, module.bank.role_parameters("defender")))
    if mode == "bipolicy":
        assert same and p["defender"][1] == p["defender"][0], "the defender's weights and behaviour are untouched"
    else:
        assert not same and p["defender"][1] == pytest.approx(p["attacker"][1]), "one policy: both roles moved"
