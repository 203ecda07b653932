"""User-facing errors.

A :class:`ConfigError` is a mistake the user can fix (a bad path, an unknown role, a wrong checkpoint). The
CLI prints its message alone, without a traceback, and exits with status 2. A :class:`TrainingStopped` is a run
that a guard ended because it could no longer learn (status 1, one message, ``last.ckpt`` written). Everything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake: the message names the config key or file, what is wrong, and how to fix it."""

    def __init__(self, key: str, problem: str, fix: str):
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"{key}: {problem}. Fix: {fix}")


class TrainingStopped(RuntimeError):
    """A guard stopped the run (:class:`abspo.config.GuardConfig`): the message says which, why, and what to do."""
