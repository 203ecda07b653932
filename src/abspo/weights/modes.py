"""Who holds the trainable weights of each role: ``model.mode``, the switch of the paper's comparison.

* ``bipolicy`` (ABS, the default): one LoRA adapter per role on the frozen base; the roles never share a
  trainable parameter, and each has its own optimizer.
* ``shared_lora``: one LoRA adapter plays both roles (classic parameter-shared self-play with ABS's anchor and
  budget); both roles' games update it together, in one optimizer step.
* ``shared_full``: one fully trainable policy plays both roles, anchored to a frozen copy of the base, as in
  Self-RedTeam (:class:`~abspo.weights.full_policy.FullPolicy`).

Everything else (game, judge, rewards, loss, data) is the same code in every mode. One switch is enough: a
config written for ``bipolicy`` (adapters and optimizers named ``attacker`` and ``defender``) runs in a shared
mode as it is: the shared adapter takes the roles' common LoRA spec, and the shared policy the defender's
optimizer settings, with the learning rate divided by 10 for ``shared_full`` (LoRA wants about 10x the full
fine-tuning rate). Set ``model.optimizers.shared`` (and ``model.bank.adapters.shared``) to choose them yourself.

Under a shared mode one batch makes one optimizer step (the one adapter's), where ``bipolicy`` makes two, so
``trainer.max_steps`` means twice the batches: ``abspo compare`` sets it per mode for the same game budget.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from abspo.weights.bank import ROLES, BankSpec, LoraSpec
from abspo.core.config import OptimizerConfig
from abspo.core.errors import ConfigError

Mode = Literal["bipolicy", "shared_lora", "shared_full"]
MODES: tuple[str, ...] = ("bipolicy", "shared_lora", "shared_full")
SHARED = "shared"
FULL_LR_FACTOR = 0.1
"""shared_full's learning rate, relative to the defender's LoRA rate, when none is configured for it."""


def resolve_mode(mode: str, bank: BankSpec, optimizers: dict[str, OptimizerConfig]
                 ) -> tuple[BankSpec, dict[str, OptimizerConfig]]:
    """The bank spec and optimizers ``mode`` trains with, derived from a config's ``bank`` and ``optimizers``."""
    if mode not in MODES:
        raise ConfigError("model.mode", f"unknown mode {mode!r}", f"use one of {list(MODES)}")
    adapters_used = {bank.roles.get(role) for role in ROLES}
    if mode == "bipolicy":
        if len(adapters_used) < len(ROLES):
            raise ConfigError("model.bank.roles", f"model.mode is bipolicy (an adapter per role), but every role maps "
                              f"to adapter {adapters_used.pop()!r}",
                              "set model.mode: shared_lora for the shared-adapter baseline, or give each role its "
                              "own adapter")
        return bank, optimizers
    optimizer = _shared_optimizer(mode, optimizers)
    if mode == "shared_full":  # LoRA specs play no part; the policy starts from shared_init_from (merged in)
        return bank, {SHARED: optimizer}
    if len(adapters_used) == 1:  # already one adapter for both roles
        name = adapters_used.pop()
        return BankSpec(adapters={name: bank.adapters[name]}, roles={r: name for r in ROLES}), {name: optimizer}
    spec = bank.adapters[SHARED] if SHARED in bank.adapters else shared_spec(mode, bank)
    return BankSpec(adapters={SHARED: spec}, roles={r: SHARED for r in ROLES}), {SHARED: optimizer}


def shared_spec(mode: str, bank: BankSpec) -> LoraSpec:
    """The one LoRA spec a shared mode trains, from a bipolicy config: the roles' common spec, starting where the
    defender starts (its ``init_from``). The shared policy is the one whose safety is measured, so it starts from
    the defender's starting point; an ``init_from`` on the attacker alone would make the defender start from an
    attacker, and is refused."""
    specs = {r: bank.adapters[bank.roles[r]] for r in ROLES if r in bank.roles}
    plain = [dataclasses.replace(s, init_from=None) for s in specs.values()]
    if any(dataclasses.asdict(s) != dataclasses.asdict(plain[0]) for s in plain):
        raise ConfigError("model.bank.adapters", f"model.mode is {mode} (one policy for both roles), but the roles' "
                          "adapters have different LoRA specs, so which one to share is ambiguous",
                          "declare model.bank.adapters.shared, or give the roles equal specs")
    return dataclasses.replace(plain[0], init_from=shared_init_from(mode, bank))


def shared_init_from(mode: str, bank: BankSpec) -> str | None:
    """Where a shared policy starts: ``model.bank.adapters.shared.init_from`` if declared, else the defender's."""
    if SHARED in bank.adapters:
        return bank.adapters[SHARED].init_from
    defender = bank.adapters.get(bank.roles.get("defender", ""))
    attacker = bank.adapters.get(bank.roles.get("attacker", ""))
    start = defender.init_from if defender is not None else None
    if attacker is not None and attacker.init_from and attacker.init_from != start:
        raise ConfigError("model.bank.adapters.attacker.init_from", f"model.mode is {mode}: one policy plays both "
                          "roles and starts where the defender starts, and the attacker's starting adapter differs",
                          "set model.bank.adapters.defender.init_from (or model.bank.adapters.shared), or drop the "
                          "attacker's init_from in this mode")
    return start


def _shared_optimizer(mode: str, optimizers: dict[str, OptimizerConfig]) -> OptimizerConfig:
    if SHARED in optimizers:  # the user's explicit choice, in every mode
        return optimizers[SHARED]
    # The LoRA optimizer the config was written with: its only one (a one-adapter bank), else the defender's.
    source = next(iter(optimizers.values())) if len(optimizers) == 1 else optimizers.get("defender")
    if source is None:
        raise ConfigError("model.optimizers", f"model.mode is {mode} and no optimizer is named 'shared' or 'defender'",
                          "add model.optimizers.shared: {lr: ...}")
    if mode == "shared_full":
        return dataclasses.replace(source, lr=source.lr * FULL_LR_FACTOR)
    return source
