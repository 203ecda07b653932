"""abspo: Anchored Bipolicy Self-Play.

The package is laid out by layer, each importing only from the ones before it: :mod:`abspo.core` (plain
helpers), :mod:`abspo.rl` (the RL maths), :mod:`abspo.weights` (base model, adapter bank), :mod:`abspo.game`
and :mod:`abspo.judges` (rules, seeds, rewards, judges), :mod:`abspo.evaluation`, :mod:`abspo.training`
(the Lightning module and its parts), :mod:`abspo.callbacks` and :mod:`abspo.strategies`, and :mod:`abspo.cli`.
tools/import_layers.py checks it. Old flat import paths still work for one release (:mod:`abspo.core.moved_modules`).
"""

from abspo.core import moved_modules

moved_modules.install()
