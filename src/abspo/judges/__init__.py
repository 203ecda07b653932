"""Judges label each (prompt, response) exchange; rewards are computed from their verdicts.

Concrete judges are imported lazily, so that ``import abspo`` does not pull in a sentence encoder or an
HTTP stack that the configured judge does not use. Configure one in YAML by class path, e.g.
``judge: {class_path: abspo.judges.HeuristicJudge}``.
"""

from importlib import import_module

from abspo.judges.base import UNLABELLED, Judge, Verdict

_LAZY = {
    "HeuristicJudge": "abspo.judges.heuristic",
    "WildGuardJudge": "abspo.judges.wildguard",
    "LlamaGuardJudge": "abspo.judges.llama_guard",
    "RemoteJudge": "abspo.judges.remote",
}

__all__ = ["Judge", "Verdict", "UNLABELLED", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'abspo.judges' has no attribute {name!r}")
