"""The import paths from before the modules moved into packages by layer, kept for one release.

abspo's modules were flat in ``src/abspo`` until they were grouped by layer (core, rl, weights, game,
training). A script that still imports an old path, ``import abspo.bank`` or ``from abspo.module import
SelfPlayModule``, gets the module at its new path (the same module object, so classes and ``isinstance`` agree)
and a :class:`DeprecationWarning` naming the new path. The public paths that configs name
(``abspo.judges.*``, ``abspo.callbacks.*``, ``abspo.strategies.*``, ``abspo.cli``) did not move.

:func:`install` runs when :mod:`abspo` is imported. It imports nothing itself until an old path is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "abspo.accounting": "abspo.weights.accounting",
    "abspo.adapter_folders": "abspo.weights.adapter_folders",
    "abspo.algorithms": "abspo.rl.algorithms",
    "abspo.atomic": "abspo.core.atomic",
    "abspo.bank": "abspo.weights.bank",
    "abspo.checkpoint_io": "abspo.training.checkpoint_io",
    "abspo.checks": "abspo.training.checks",
    "abspo.command_line": "abspo.core.command_line",
    "abspo.config": "abspo.core.config",
    "abspo.data": "abspo.game.seeds",
    "abspo.degenerate": "abspo.rl.degenerate",
    "abspo.digest": "abspo.core.digest",
    "abspo.distributed": "abspo.weights.distributed",
    "abspo.diversity": "abspo.rl.diversity",
    "abspo.errors": "abspo.core.errors",
    "abspo.full_policy": "abspo.weights.full_policy",
    "abspo.guards": "abspo.training.guards",
    "abspo.jsonl": "abspo.core.jsonl",
    "abspo.lockstep": "abspo.training.lockstep",
    "abspo.logprobs": "abspo.rl.logprobs",
    "abspo.micro_batches": "abspo.rl.micro_batches",
    "abspo.models": "abspo.weights.models",
    "abspo.modes": "abspo.weights.modes",
    "abspo.module": "abspo.training.module",
    "abspo.parse_errors": "abspo.core.parse_errors",
    "abspo.planner": "abspo.training.planner",
    "abspo.play": "abspo.training.play",
    "abspo.precision": "abspo.rl.precision",
    "abspo.preemption": "abspo.training.preemption",
    "abspo.resume": "abspo.training.resume",
    "abspo.rewards": "abspo.game.rewards",
    "abspo.rollout": "abspo.rl.rollout",
    "abspo.run_folder": "abspo.core.run_folder",
    "abspo.sft": "abspo.training.sft",
    "abspo.sharding": "abspo.weights.sharding",
    "abspo.step_logging": "abspo.training.step_logging",
    "abspo.timing": "abspo.core.timing",
    "abspo.update": "abspo.training.update",
    "abspo.vllm_rollouts": "abspo.training.vllm_rollouts",
    "abspo.warm_start": "abspo.training.warm_start",
}
"""Old dotted path -> new dotted path."""


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path of :data:`MOVED` to the module at its new path, with a DeprecationWarning."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        """The module at the new path is already executed: nothing to run."""


def install() -> None:
    """Put the finder on :data:`sys.meta_path` once."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
