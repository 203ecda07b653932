"""The vLLM rollout backend's sync protocol, against ``tests/fake_vllm.py`` (vLLM cannot be installed here).

What must hold with any engine: the base is given to the engine once and never sent again; each role's turns go
out with that role's adapter as a LoRA request; an optimizer step makes the next rollout push the stepped adapter,
and only it, as a new LoRA id (the old one removed from the engine, its folder deleted); the weights the engine
reads are exactly the trainer's; and the update re-scores the turns with the trainer's own forward.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model_state_dict

from abspo.core.config import AlgorithmConfig, OptimizerConfig, ScheduleConfig
from abspo.core.errors import ConfigError
from abspo.game.rules import GameConfig
from abspo.training.module import SelfPlayModule
from abspo.training.vllm_rollouts import RolloutConfig, VLLMConfig
from tests.conftest import TINY
from tests.fake_vllm import FakeLLM

FAKE = RolloutConfig(backend="vllm", vllm=VLLMConfig(engine="tests.fake_vllm.FakeLLM", gpu_memory_utilization=0.2))
GAME = GameConfig(max_new_tokens_attacker=6, max_new_tokens_defender=6)


def make(judge, **kwargs) -> SelfPlayModule:
    optimizers = {"attacker": OptimizerConfig(lr=1e-2), "defender": OptimizerConfig(lr=1e-2)}
    return SelfPlayModule(base=TINY, judge=judge, game=GAME, optimizers=optimizers, rollout=FAKE, **kwargs)


def trainer_adapter(module: SelfPlayModule, adapter: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(module.bank.model, adapter_name=adapter).items()}


def served(module: SelfPlayModule, adapter: str) -> dict[str, torch.Tensor]:
    """The tensors the engine read for the version of ``adapter`` it holds now."""
    _, request = module.vllm_engine().served[adapter]
    return module.vllm_engine().engine.loaded[request.lora_int_id]


def assert_served_is_trainers(module: SelfPlayModule, adapter: str) -> None:
    mine, theirs = trainer_adapter(module, adapter), served(module, adapter)
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name


def test_each_role_is_a_lora_request_and_each_step_pushes_a_new_adapter_version(judge, seeds):
    module = make(judge)
    perturb = [p for a in ("attacker", "defender") for p in module.bank.adapter_parameters(a)]
    with torch.no_grad():  # LoRA B starts at zero: give the roles distinct weights
        for i, p in enumerate(perturb):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.05)
    module.play(seeds.batch(0).seeds, batch_index=0)
    engine = module.vllm_engine().engine
    assert engine is FakeLLM.instances[-1], "the engine is built once, at the first rollout"
    assert engine.init["model"] == "tiny-qwen2" and engine.init["max_loras"] == 2 and engine.init["max_lora_rank"] == 16
    assert [name for name, _, _ in engine.requests] == ["attacker-v0", "defender-v0"]
    for adapter in ("attacker", "defender"):
        assert_served_is_trainers(module, adapter)
    first_ids = {a: module.vllm_engine().served[a][1].lora_int_id for a in ("attacker", "defender")}
    first = {a: served(module, a) for a in ("attacker", "defender")}

    exchanges = module.play(seeds.batch(1).seeds, batch_index=1)
    assert len(engine.requests) == 4 and not engine.removed, "no step, no push: the same LoRA ids serve again"
    module.learn(exchanges, 1)  # both adapters step
    module.play(seeds.batch(2).seeds, batch_index=2)
    assert [name for name, _, _ in engine.requests[-2:]] == ["attacker-v1", "defender-v1"]
    assert sorted(engine.removed) == sorted(first_ids.values()), "the stale versions were dropped from the engine"
    for adapter in ("attacker", "defender"):
        assert_served_is_trainers(module, adapter)
        assert any(not torch.equal(first[adapter][k], v) for k, v in served(module, adapter).items()), "updated"
    folders = sorted(p.name for p in module.vllm_engine().workdir.iterdir())
    assert folders == ["attacker-v1", "defender-v1"], "old versions' folders are deleted"
    for folder in module.vllm_engine().workdir.iterdir():
        assert {p.name for p in folder.iterdir()} <= {"adapter_config.json", "adapter_model.safetensors", "abspo_role.json"}
        assert sum(p.stat().st_size for p in folder.iterdir()) < 2_000_000, "an adapter, never base weights"


def test_only_the_adapter_that_stepped_is_pushed(judge, seeds):
    module = make(judge, schedule=ScheduleConfig(mode="phases", phase_steps=5))  # the attacker learns alone
    exchanges = module.play(seeds.batch(0).seeds, batch_index=0)
    module.learn(exchanges, 0)
    module.play(seeds.batch(1).seeds, batch_index=1)
    engine = module.vllm_engine().engine
    assert [name for name, _, _ in engine.requests] == ["attacker-v0", "defender-v0", "attacker-v1", "defender-v0"]
    assert len(engine.removed) == 1


def test_the_update_rescores_turns_with_the_trainers_forward(judge, seeds):
    module = make(judge, algorithm=AlgorithmConfig(rollout_is_cap=None))
    exchanges = module.play(seeds.batch(0).seeds, batch_index=0)
    assert not any(e.sampled_logprobs for e in exchanges), "without the correction the engine's log-probs are unused"
    module.clock.take()
    before = [p.detach().clone() for p in module.bank.adapter_parameters("defender")]
    stats = module.learn(exchanges, 0)
    phases = module.clock.take()
    assert phases.get("score/old", 0) > 0 and phases.get("score/anchor", 0) > 0, "old and anchor log-probs re-scored"
    assert stats["defender/samples"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, module.bank.adapter_parameters("defender")))


def defender_gradient(judge, seeds, cap: float | None, shift: float) -> tuple[list[torch.Tensor], dict]:
    """The defender's gradient from one gradient pass over one batch's games, with the engine reporting its
    log-probs ``shift`` away from the trainer's."""
    rollout = RolloutConfig(backend="vllm", vllm=VLLMConfig(engine="tests.fake_vllm.FakeLLM",
                                                            engine_kwargs={"logprob_shift": shift}))
    torch.manual_seed(0)
    module = SelfPlayModule(base=TINY, judge=judge, game=GAME, rollout=rollout,
                            algorithm=AlgorithmConfig(rollout_is_cap=cap),
                            optimizers={"attacker": OptimizerConfig(lr=1e-2), "defender": OptimizerConfig(lr=1e-2)})
    exchanges = module.play(seeds.batch(0).seeds, batch_index=0)
    played = [e for e in exchanges if "defender" in e.turns]
    assert len(played) >= 2
    for i, e in enumerate(played):  # distinct rewards, so that the defender's advantages are not all zero
        e.rewards["defender"] = float(i % 3)
    rollout_batch = module.updater.rollout_batch(["defender"], exchanges)
    stats = module.updater.gradient_pass(["defender"], rollout_batch)
    grads = [p.grad.clone() for p in module.bank.adapter_parameters("defender")]
    return grads, stats


def test_truncated_importance_sampling_weights_the_engines_turns_by_the_capped_ratio(judge, seeds):
    """RL review (f): the engine's log-probs are asked for and each token weighted by min(pi_trainer / pi_engine,
    cap). The fake engine reports log-probs ``shift`` below the trainer's, so every weight is exp(shift) (capped):
    the gradient scales by exactly that, and with the engine equal to the trainer nothing changes."""
    plain, _ = defender_gradient(judge, seeds, None, 0.0)
    same, stats = defender_gradient(judge, seeds, 2.0, 0.0)
    assert abs(stats["is_weight"] - 1.0) < 1e-4 and stats["is_capped_frac"] == 0.0
    for a, b in zip(plain, same):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    below, stats = defender_gradient(judge, seeds, 2.0, -0.5)  # weight exp(0.5) = 1.6487, under the cap
    assert stats["is_weight"] == pytest.approx(math.exp(0.5), rel=1e-3) and stats["is_capped_frac"] == 0.0
    for a, b in zip(plain, below):
        torch.testing.assert_close(b, a * math.exp(0.5), rtol=1e-3, atol=1e-7)
    capped, stats = defender_gradient(judge, seeds, 2.0, -1.0)  # weight exp(1) = 2.718, capped at 2
    assert stats["is_capped_frac"] == pytest.approx(1.0)
    assert sum(p.abs().sum() for p in plain) > 0
    for a, b in zip(plain, capped):
        torch.testing.assert_close(b, a * 2.0, rtol=1e-3, atol=1e-7)


def test_settings_the_backend_cannot_serve_are_refused(judge):
    with pytest.raises(ConfigError, match="model.algorithm.old_logprobs"):
        make(judge, algorithm=AlgorithmConfig(old_logprobs="sampler"))
    with pytest.raises(ConfigError, match="model.rollout.backend.*shared_full"):
        SelfPlayModule(base=TINY, judge=judge, rollout=FAKE, mode="shared_full")
    missing = RolloutConfig(backend="vllm", vllm=VLLMConfig(engine="no_such_vllm_module.LLM"))
    with pytest.raises(ConfigError, match=r"model.rollout.vllm.engine.*pip install 'abspo\[vllm\]'"):
        SelfPlayModule(base=TINY, judge=judge, rollout=missing)


@pytest.mark.parametrize("ranks, served_as", [((4, 12), 16)])
def test_the_engine_gets_a_max_lora_rank_vllm_accepts(judge, ranks, served_as):
    """vLLM's LoRAConfig takes only 8, 16, 32, ... 512 (the fake refuses any other value the same way): a lower rank
    is served under the next one up."""
    from abspo.weights.bank import BankSpec, LoraSpec

    spec = BankSpec(adapters={role: LoraSpec(r=r, alpha=2 * r) for role, r in zip(("attacker", "defender"), ranks)})
    assert make(judge, bank=spec).vllm_engine().engine.init["max_lora_rank"] == served_as


def test_a_rank_vllm_cannot_serve_is_refused_when_the_module_is_built(judge):
    from abspo.weights.bank import BankSpec, LoraSpec

    spec = BankSpec(adapters={role: LoraSpec(r=r) for role, r in (("attacker", 8), ("defender", 1024))})
    with pytest.raises(ConfigError, match=r"model.bank.adapters: LoRA rank 1024 is above 512"):
        make(judge, bank=spec)
