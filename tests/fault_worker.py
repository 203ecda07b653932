"""Run ``abspo`` in this process with one fault injected, for tests/test_reliability.py.

    python -m tests.fault_worker KILL_POINT N -- fit --config ...

KILL_POINT is where this process sends itself SIGKILL, on the N-th time it gets there:

* ``rollout``: at the start of a turn's generation (mid-rollout);
* ``update``: at the start of a gradient pass (mid-update: other roles may already have stepped this batch);
* ``save``: half-way through writing a checkpoint file (the first half of its bytes on disk);
* ``none``: no fault.
"""

from __future__ import annotations

import io
import os
import signal
import sys


def _kill_on_call(owner, name: str, n: int, before=None) -> None:
    inner = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            if before is not None:
                before(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(*args, **kwargs)

    setattr(owner, name, wrapper)


def _half_write(checkpoint, fh, *_, **__) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    fh.write(data[: len(data) // 2])
    fh.flush()
    os.fsync(fh.fileno())


def main() -> None:
    point, n, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: python -m tests.fault_worker KILL_POINT N -- <abspo arguments>"
    n = int(n)
    import abspo.training.checkpoint_io
    import abspo.training.play
    import abspo.training.update
    from abspo.cli import main as abspo_main

    if point == "rollout":
        _kill_on_call(abspo.training.play, "generate", n)
    elif point == "update":
        _kill_on_call(abspo.training.update.PolicyUpdate, "gradient_pass", n)
    elif point == "save":
        _kill_on_call(abspo.training.checkpoint_io.torch, "save", n, before=_half_write)
    elif point != "none":
        raise SystemExit(f"unknown kill point {point!r}")
    abspo_main(argv)


if __name__ == "__main__":
    main()
