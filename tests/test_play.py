"""abspo.training.play: each role's turns are sampled with that role's adapter and its own key, and stored as that role's.

The learning tests build their own games, so a play loop that handed the attacker's turns to the defender (or
sampled them through the other adapter) would pass them (the RL review's finding (d)). Keyed sampling makes a turn
a pure function of (weights, prompt, key), so each recorded turn can be regenerated on its own and compared.
"""

from __future__ import annotations

import torch

from abspo.core.config import OptimizerConfig
from abspo.game.rules import GameConfig, attacker_prompt, defender_prompt
from abspo.training.module import SelfPlayModule
from abspo.training.play import sampling_key
from abspo.rl.rollout import generate
from tests.conftest import TINY, perturb

GAME = GameConfig(max_new_tokens_attacker=7, max_new_tokens_defender=11)


def regenerate(module: SelfPlayModule, role: str, prompt: str, key: int, new_tokens: int) -> list[int]:
    with torch.no_grad(), module.bank.role(role) as model:
        gen = generate(model, module.tokenizer, [prompt], new_tokens, GAME.temperature, keys=[key])
    return gen.completion_ids[0]


def test_each_turn_is_its_roles_sample_with_its_games_key(judge, seeds):
    module = SelfPlayModule(base=TINY, judge=judge, game=GAME,
                            optimizers={"attacker": OptimizerConfig(lr=1e-2), "defender": OptimizerConfig(lr=1e-2)})
    perturb(module.bank.adapter_parameters("attacker"), seed=1)  # two adapters that sample differently
    perturb(module.bank.adapter_parameters("defender"), seed=2)
    batch = 3
    exchanges = module.play(seeds.batch(batch).seeds, batch_index=batch)
    revised = [e for e in exchanges if e.revised]
    answered = [e for e in exchanges if "defender" in e.turns]
    assert revised and answered and any(not e.revised for e in answered)
    differs = {"attacker": 0, "defender": 0}  # turns the other role's adapter would have sampled otherwise
    for e in revised:
        prompt = attacker_prompt(module.tokenizer, GAME, e.seed, e.seed_harmful)
        key = sampling_key(batch, e.game, "attacker")
        assert e.turns["attacker"][1] == regenerate(module, "attacker", prompt, key, GAME.max_new_tokens_attacker)
        differs["attacker"] += e.turns["attacker"][1] != regenerate(module, "defender", prompt, key, GAME.max_new_tokens_attacker)
    for e in answered:
        prompt = defender_prompt(module.tokenizer, GAME, e.prompt)
        key = sampling_key(batch, e.game, "defender")
        assert e.turns["defender"][1] == regenerate(module, "defender", prompt, key, GAME.max_new_tokens_defender)
        differs["defender"] += e.turns["defender"][1] != regenerate(module, "attacker", prompt, key, GAME.max_new_tokens_defender)
    # (a few short turns come out the same under both adapters of this random model; most must not)
    assert differs["attacker"] > len(revised) / 2 and differs["defender"] > len(answered) / 2, differs
