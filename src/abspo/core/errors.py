"""User-facing errors.

A :class:`ConfigError` is a mistake the user can fix (a bad path, an unknown role, a wrong checkpoint). The
CLI prints its message alone, without a traceback, and exits with status 2. A :class:`TrainingStopped` is a run
that a guard ended because it could no longer learn (status 1, one message, ``last.ckpt`` written). Everything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


class ConfigError(ValueError):
    """A user mistake: the message names the config key or file, what is wrong, and how to fix it."""

    def __init__(self, key: str, problem: str, fix: str):
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"{key}: {problem}. Fix: {fix}")


class TrainingStopped(RuntimeError):
    """A guard stopped the run (:class:`abspo.training.guards.GuardConfig`): the message says which, why, and what to do."""


def did_you_mean(word: str, choices: list[str]) -> str:
    """``"did you mean 'x'? "`` for the choice closest to a misspelt ``word``, else ``""``: the start of a fix."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def undecodable_line(data: bytes, err: UnicodeDecodeError) -> int:
    """The 1-based line of ``data`` where ``err`` (from decoding it as UTF-8) happened: for a ``file:line``."""
    return data[: err.start].count(b"\n") + 1


def check_output_folder(path: str | Path, key: str) -> None:
    """A ConfigError naming ``key`` unless ``path`` is a folder that can be written, or can be created as one.
    Checked before any work, without creating anything: a command that would fail only when it writes its
    results (after its generation and judging) fails at once instead."""
    folder = Path(path).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"would be inside {existing}, which is a file"
        raise ConfigError(key, f"{path} {where}, not a folder", "point it at a folder (an existing one or one to create)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{existing} cannot be written", "point it at a folder you can write to")


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """A ConfigError raised inside becomes ``<prog>: error: <message>`` on stderr and exit status 2: what the
    ``abspo`` command and the scripts under ``tools/`` do with a user's mistake."""
    try:
        yield
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
