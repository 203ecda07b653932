"""The layout of a run's folder, ``<run.output_root>/<run.name>/``: one name per thing a run writes there.

Whatever writes an entry, reads it back (``abspo compare``, the curves, cross-play labels) or removes it
(``--run.overwrite``, which must remove exactly what a run wrote and nothing else the folder holds) takes its name
from here, so the three can never disagree.
"""

CHECKPOINTS = "checkpoints"
"""``last.ckpt`` and periodic checkpoints: adapters, optimizer and scheduler states, loop and data position."""
TENSORBOARD = "tb"
"""TensorBoard event files, and Lightning's ``config.yaml`` (the run's whole resolved config)."""
RESOLVED_CONFIG = f"{TENSORBOARD}/config.yaml"
ADAPTERS = "adapters"
"""``adapters/<role>/``: each role as a PEFT folder (:class:`abspo.callbacks.export.AdapterExport`)."""
EVAL = "eval"
"""``abspo test`` reports, one folder per defender label."""
SAMPLES = "samples"
"""Sampled games as pages (:class:`abspo.callbacks.samples.SampleGames`)."""
DIAGNOSTICS = "diagnostics.json"
"""The collapse monitor's summary at the end of training."""

SAFETY_TABLE = "safety_table"
"""The before/after table at the end of training (:class:`abspo.callbacks.safety_table.SafetyTable`)."""

RUN_OUTPUTS = (CHECKPOINTS, TENSORBOARD, ADAPTERS, EVAL, SAMPLES, DIAGNOSTICS, SAFETY_TABLE)
"""Every entry a run writes."""
