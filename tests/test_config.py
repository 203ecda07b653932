"""Typed configs: role schedule, optimizer construction and learning-rate schedule, algorithm validation."""

from __future__ import annotations

import math

import pytest
import torch

from abspo.core.config import AlgorithmConfig, OptimizerConfig, ScheduleConfig, default_optimizers
from abspo.core.errors import ConfigError

KEY = "model.optimizers.attacker"


def params():
    return [torch.nn.Parameter(torch.zeros(3, 2))]


# -- ScheduleConfig -------------------------------------------------------------------------------------------


def test_alternate_updates_both_roles_every_batch_in_order():
    assert [ScheduleConfig().roles_to_update(i) for i in (0, 1, 99)] == [["attacker", "defender"]] * 3
    assert ScheduleConfig(first="defender").roles_to_update(5) == ["defender", "attacker"]


def test_phases_switch_role_at_phase_boundaries():
    s = ScheduleConfig(mode="phases", phase_steps=3)
    # batches 0-2: attacker, 3-5: defender, 6-8: attacker, 9: defender
    expected = ["attacker"] * 3 + ["defender"] * 3 + ["attacker"] * 3 + ["defender"]
    assert [s.roles_to_update(i) for i in range(10)] == [[r] for r in expected]


def test_phases_first_defender():
    s = ScheduleConfig(mode="phases", phase_steps=2, first="defender")
    expected = ["defender", "defender", "attacker", "attacker", "defender"]
    assert [s.roles_to_update(i) for i in range(5)] == [[r] for r in expected]


def test_phases_of_one_batch_alternate_roles():
    s = ScheduleConfig(mode="phases", phase_steps=1)
    assert [s.roles_to_update(i) for i in range(4)] == [["attacker"], ["defender"], ["attacker"], ["defender"]]


@pytest.mark.parametrize("phase_steps", [0, -1])
def test_non_positive_phase_steps_is_a_config_error(phase_steps):
    # phase_steps < 1 must be reported as a user mistake naming the key, not crash mid-training
    # (ZeroDivisionError) or silently give a meaningless schedule. SelfPlayModule validates it at construction.
    with pytest.raises(ConfigError, match="model.schedule.phase_steps"):
        ScheduleConfig(mode="phases", phase_steps=phase_steps).validate()


# -- OptimizerConfig.build ------------------------------------------------------------------------------------


def test_build_adamw_passes_lr_weight_decay_betas():
    opt, sched = OptimizerConfig(name="AdamW", lr=0.01, weight_decay=0.1, betas=[0.8, 0.9]).build(params(), KEY)
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["betas"] == (0.8, 0.9)
    assert opt.defaults["weight_decay"] == 0.1
    assert opt.param_groups[0]["lr"] == 0.01  # lr_factor(0) = 1 without warm-up
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)


def test_build_sgd_does_not_get_betas():
    opt, _ = OptimizerConfig(name="SGD", lr=0.5, weight_decay=0.01).build(params(), KEY)
    assert type(opt) is torch.optim.SGD
    assert "betas" not in opt.defaults
    assert opt.param_groups[0]["lr"] == 0.5 and opt.defaults["weight_decay"] == 0.01


def test_build_rprop_a_torch_optim_optimizer_without_weight_decay():
    # Rprop is a class in torch.optim but takes no weight_decay (nor betas): with the default weight_decay 0
    # it must build, not raise TypeError("unexpected keyword argument 'weight_decay'").
    opt, _ = OptimizerConfig(name="Rprop", lr=0.01).build(params(), KEY)
    assert type(opt) is torch.optim.Rprop
    assert opt.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("name", ["AdamWW", "adamw", "lr_scheduler", "Tensor", ""])
def test_build_unknown_optimizer_is_config_error(name):
    with pytest.raises(ConfigError) as err:
        OptimizerConfig(name=name).build(params(), KEY)
    assert err.value.key == f"{KEY}.name"
    assert f"{KEY}.name" in str(err.value)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
@pytest.mark.parametrize("decay_steps", [None, 0])
def test_decay_without_decay_steps_is_config_error(decay, decay_steps):
    with pytest.raises(ConfigError) as err:
        OptimizerConfig(decay=decay, decay_steps=decay_steps).build(params(), KEY)
    assert err.value.key == f"{KEY}.decay_steps"


def test_scheduler_drives_the_optimizer_lr():
    opt, sched = OptimizerConfig(name="SGD", lr=0.1, warmup_steps=2, decay="linear", decay_steps=4).build(params(), KEY)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # step 0: 0.1 * 1/2; step 1: 0.1 * 2/2; then linear over decay_steps - warmup = 2 steps:
    # step 2: 0.1 * (1 - 0/2); step 3: 0.1 * (1 - 1/2); step 4: 0; step 5: 0 (clamped)
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.05, 0.0, 0.0])


# -- lr_factor ------------------------------------------------------------------------------------------------


def test_lr_factor_warmup_then_constant():
    cfg = OptimizerConfig(warmup_steps=4)
    # (step + 1) / 4 during warm-up, then 1
    assert [cfg.lr_factor(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert OptimizerConfig().lr_factor(0) == 1.0 and OptimizerConfig().lr_factor(10_000) == 1.0


def test_lr_factor_linear():
    cfg = OptimizerConfig(warmup_steps=2, decay="linear", decay_steps=6)
    # warm-up 1/2, 2/2; then span 6 - 2 = 4: 1 - (s - 2)/4 -> s=2: 1, 3: .75, 4: .5, 5: .25, 6: 0; after: 0
    expected = [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0]
    assert [cfg.lr_factor(s) for s in range(9)] == pytest.approx(expected)


def test_lr_factor_cosine():
    cfg = OptimizerConfig(warmup_steps=2, decay="cosine", decay_steps=6)
    # 0.5 * (1 + cos(pi * p)), p = (s - 2) / 4:
    #   p=0 -> 1; p=.25 -> .5 (1 + .7071068) = .8535534; p=.5 -> .5; p=.75 -> .1464466; p=1 -> 0
    expected = [0.5, 1.0, 1.0, 0.8535534, 0.5, 0.1464466, 0.0, 0.0]
    assert [cfg.lr_factor(s) for s in range(8)] == pytest.approx(expected, abs=1e-6)


def test_lr_factor_cosine_without_warmup():
    cfg = OptimizerConfig(decay="cosine", decay_steps=3)
    # p = s / 3: cos(0) -> 1; cos(pi/3) = .5 -> .75; cos(2pi/3) = -.5 -> .25; cos(pi) -> 0
    assert [cfg.lr_factor(s) for s in range(4)] == pytest.approx([1.0, 0.75, 0.25, 0.0])
    assert math.isclose(cfg.lr_factor(100), 0.0, abs_tol=1e-12)


def test_default_optimizers_defender_faster():
    opts = default_optimizers()
    assert set(opts) == {"attacker", "defender"}
    assert opts["defender"].lr > opts["attacker"].lr


# -- AlgorithmConfig ------------------------------------------------------------------------------------------


def test_default_algorithm_is_valid():
    AlgorithmConfig().validate()
    AlgorithmConfig(estimator="grpo", group_size=2).validate()
    AlgorithmConfig(estimator="reinforce_pp", group_size=3).validate()


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("group_size", [1, 0])
def test_group_estimators_need_two_games_per_seed(estimator, group_size):
    with pytest.raises(ConfigError) as err:
        AlgorithmConfig(estimator=estimator, group_size=group_size).validate()
    assert err.value.key == "model.algorithm.group_size"
    assert "model.algorithm.group_size" in str(err.value) and estimator in str(err.value)


@pytest.mark.parametrize("cap", [0.5, 0.0, -1.0])
def test_an_importance_weight_cap_below_one_is_refused(cap):
    with pytest.raises(ConfigError, match="model.algorithm.rollout_is_cap"):
        AlgorithmConfig(rollout_is_cap=cap).validate()
    AlgorithmConfig(rollout_is_cap=None).validate()


@pytest.mark.parametrize("field", ["group_size", "update_epochs", "micro_batch_size", "accumulate_batches",
                                   "micro_batch_tokens"])
def test_positive_integer_fields(field):
    with pytest.raises(ConfigError) as err:
        AlgorithmConfig(**{field: 0}).validate()
    assert err.value.key == f"model.algorithm.{field}"
