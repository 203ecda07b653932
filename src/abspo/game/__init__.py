"""The red-team game: its rules, its seed requests, and the rewards paid from a judge's verdicts.

:mod:`~abspo.game.rules` (prompt templates, turn parsing, the record of one exchange), :mod:`~abspo.game.seeds`
(the harmful and benign seed stream) and :mod:`~abspo.game.rewards` (payoff tables). The judges that score an
exchange are the public extension point :mod:`abspo.judges`, in the same layer.

``from abspo.game import Exchange`` (the path before the modules moved into packages) still works for one
release, with a :class:`DeprecationWarning`: import from :mod:`abspo.game.rules`.
"""

from __future__ import annotations

import importlib
import warnings


def __getattr__(name: str):
    rules = importlib.import_module("abspo.game.rules")
    if name.startswith("_") or not hasattr(rules, name):
        raise AttributeError(f"module 'abspo.game' has no attribute {name!r}")
    warnings.warn(f"abspo.game.{name} moved to abspo.game.rules.{name}; the old path goes in the next release",
                  DeprecationWarning, stacklevel=2)
    return getattr(rules, name)
