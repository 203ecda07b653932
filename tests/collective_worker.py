"""Workers for :mod:`abspo.weights.distributed`'s own tests, spawned 2 at a time (``torch.multiprocessing.spawn``): they
import torch and :mod:`abspo.weights.distributed` only, so a process starts in a second."""

from __future__ import annotations

import datetime

import torch

from abspo.weights.distributed import Collective


def finish() -> None:
    """Leave the process group together: a process that tears gloo down while the other is still talking to it
    can make that one abort ("terminate called without an active exception")."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def absent_gradient_worker(rank: int, port: int, out: str) -> None:
    """One of 2 processes (``torch.multiprocessing.spawn``): parameter ``a`` has a gradient on rank 1 only, ``b``
    on neither; sum the gradients and step AdamW, as :meth:`SelfPlayModule.optimizer_step` does. Rank 0 saves
    what it got."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=60))
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([a, b], lr=0.1, weight_decay=0.1)
    a.grad = torch.full((3,), 2.0) if rank == 1 else None
    collective = Collective.current()
    collective.sum_grads_([a, b])
    opt.step()
    if rank == 0:
        torch.save({"a_grad": a.grad, "b_grad_is_none": b.grad is None, "b": b.detach().clone()}, out)
    finish()


class SlowOnRankOne:
    """A task of 6 items whose batches take 0.4 s on rank 1 and no time on rank 0."""

    name, items = "slow", list(range(6))

    def __init__(self, rank: int):
        self.rank = rank

    def score(self, model, tokenizer, items):
        import time

        from abspo.evaluation.tasks import Outcome

        time.sleep(0.4 if self.rank == 1 else 0.0)
        return [Outcome(True, "") for _ in items]


def time_budget_worker(rank: int, port: int, out: str) -> None:
    """One of 2 processes scoring :class:`SlowOnRankOne` in batches of 2 with a 0.2 s budget: rank 1 is over it
    after its first batch, rank 0 is not. Rank 0 saves both processes' scored counts."""
    from abspo.evaluation.tasks import evaluate

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=60))
    result = evaluate(SlowOnRankOne(rank), None, None, batch_size=2, time_budget_s=0.2, collective=Collective.current())
    scored = [None, None]
    torch.distributed.all_gather_object(scored, result.scored)
    if rank == 0:
        torch.save({"scored": scored}, out)
    finish()
