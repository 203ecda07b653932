"""Stopping a run cleanly: SIGTERM (a cluster's preemption notice) or Ctrl-C finishes the batch of games being
played, writes ``last.ckpt`` and exits non-zero with the command that resumes the run.

Lightning alone, on SIGTERM, finishes the batch and raises ``SIGTERMException``, a ``SystemExit`` whose status
is 0: a scheduler reads that as success and does not requeue, and every batch since the last periodic checkpoint
is lost. In abspo:

* :class:`abspo.callbacks.checkpoint.RunCheckpoint` writes ``last.ckpt`` when that exception passes through the
  trainer (every process takes part, as in any save; the batch was finished, so the checkpoint is exact);
* the first Ctrl-C (SIGINT) asks for the same stop; a second one abandons the batch at once (exit status 1, as
  Lightning does): nothing is saved, and the last checkpoint on disk stays whole, since writes are atomic
  (:mod:`abspo.training.checkpoint_io`);
* ``abspo fit`` then exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), the status a shell
  reports for a process that signal ended, after one line saying how to resume.

On SLURM, Lightning's auto-requeue (``#SBATCH --signal=USR1@90``: checkpoint and ``scontrol requeue``) stays in
charge of requeueing.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Callable

_received: list[int] = []  # the stop signals received by this process, in order


def install(trainer) -> Callable[[], None]:
    """Handle SIGTERM and SIGINT for ``trainer``'s fit; returns the function that puts the old handlers back."""
    _received.clear()

    def on_sigterm(signum, _frame):
        _received.append(signum)  # Lightning's own handler (composed with this one) asks the loop to stop

    def on_sigint(signum, _frame):
        if _received:
            raise KeyboardInterrupt  # the second one: abandon the batch now
        _received.append(signum)
        trainer._signal_connector.received_sigterm = True  # stop after this batch, as on SIGTERM
        print("abspo: interrupted: finishing this batch and writing last.ckpt (Ctrl-C again to abandon the batch)",
              file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, on_sigterm), (signal.SIGINT, on_sigint))}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def exit_status() -> int:
    """128 + the first stop signal's number (143 for SIGTERM, 130 for SIGINT); 143 when Lightning saw a SIGTERM
    that reached it some other way."""
    return 128 + (_received[0] if _received else signal.SIGTERM)


def resume_command(argv: list[str]) -> str:
    """The ``abspo`` command line that resumes the run ``argv`` started: the same arguments, ``--ckpt_path last``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if arg.startswith("--ckpt_path="):
            continue
        out.append(arg)
    return shlex.join(["abspo", *out, "--ckpt_path", "last"])
