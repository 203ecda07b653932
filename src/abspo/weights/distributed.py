"""Data parallelism for the self-play loop: what crosses processes, and why nothing else has to.

N processes each hold the whole frozen base and both adapters. Each plays an interleaved share of the batch's
seeds (:meth:`Collective.shard`); a game's samples are keyed by its index in the global batch
(:func:`abspo.rl.rollout.generate` with ``keys``), so which process plays it does not change it. Three things
then cross processes, all small:

- the **sums** behind every statistic that is global in the math (REINFORCE++ whitening, reward
  normalisation, the token count that weights the loss, logged means): :meth:`Collective.sum`;
- each adapter's **gradient**, summed once before that adapter's optimizer step (LoRA-sized, never the base):
  :meth:`Collective.sum_grads_`. The loss of every micro-batch is weighted by its share of the *global*
  token count, so the sum is exactly the one-process gradient;
- the played games, gathered for metrics, sample pages and logs: :meth:`Collective.gather_objects`.

So N processes on B/N games each compute what one process computes on B games, up to float summation order.
Every process makes the same collective calls in the same order, whether or not it has games of a role this
batch (a share with no attacker turn contributes zeros), so none waits forever for another.

One process is the trivial case: every method is the identity and nothing is imported from
``torch.distributed``.

:func:`full_tensor` is the one helper for sharded (FSDP2) tensors that the bank needs too, so it lives here, below
both the bank and :mod:`abspo.weights.sharding`, which applies FSDP2 to the bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor of a sharded (DTensor) parameter or gradient: a collective, call it on every process."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@dataclass(frozen=True)
class Collective:
    """The process group the loop runs in (world size 1: a single process)."""

    world_size: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")
    """Where tensors must be for the backend's collectives (CPU for gloo, the process's GPU for NCCL)."""

    @classmethod
    def current(cls) -> Collective:
        """The default process group if torch.distributed is initialised (as Lightning's DDP does), else one
        process."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls()
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return cls(dist.get_world_size(), dist.get_rank(), device)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> slice:
        """This process's share of ``n`` items: every ``world_size``-th from its rank (shares differ by at most
        one; some may be empty). Interleaved, not contiguous: a batch's unrevised seeds are the first of each
        label (:func:`abspo.training.play.unrevised_seeds`), so contiguous shares would give the attacker's turns and the
        longer defender prompts to the last processes while the first ones wait."""
        return slice(self.rank, n, self.world_size)

    def sum(self, x: Tensor) -> Tensor:
        """``x`` summed over all processes (a new tensor, on ``x``'s device and dtype)."""
        if not self.active:
            return x
        buf = x.detach().to(self.device, torch.float64 if x.is_floating_point() else x.dtype, copy=True)
        torch.distributed.all_reduce(buf)
        return buf.to(x.device, x.dtype)

    def max(self, x: Tensor) -> Tensor:
        """``x`` maximised element-wise over all processes."""
        if not self.active:
            return x
        buf = x.detach().to(self.device, copy=True)
        torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.MAX)
        return buf.to(x.device)

    def sum_all(self, tensors: list[Tensor | None], like: list[Tensor]) -> list[Tensor]:
        """Each tensor summed over processes, in one all-reduce of their concatenation; ``None`` counts as
        zeros shaped like the matching ``like`` tensor, so a process with nothing to add calls this the same
        way as the others. Results are new tensors with ``like``'s device and dtype."""
        if not like:
            return []
        flat = torch.cat([(t if t is not None else torch.zeros_like(ref)).detach().reshape(-1).float().to(self.device)
                          for t, ref in zip(tensors, like)])
        if self.active:
            torch.distributed.all_reduce(flat)
        out, offset = [], 0
        for ref in like:
            out.append(flat[offset:offset + ref.numel()].view_as(ref).to(ref.device, ref.dtype))
            offset += ref.numel()
        return out

    def sum_present(self, tensors: list[Tensor | None], like: list[Tensor]) -> list[Tensor | None]:
        """:meth:`sum_all`, except that an entry no process has stays ``None`` (as it is on one process): a
        gradient nobody computed is absent, not zero, so an optimizer skips its parameter instead of stepping
        AdamW's momentum and weight decay on zeros. One all-reduce, the presence counts riding along."""
        present = torch.tensor([float(t is not None) for t in tensors])
        *sums, counts = self.sum_all([*tensors, present], [*like, present])
        return [s if n > 0 else None for s, n in zip(sums, counts.tolist())]

    def sum_grads_(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each parameter's ``.grad`` by its sum over processes (:meth:`sum_present`)."""
        if self.active:
            for p, g in zip(params, self.sum_present([p.grad for p in params], params)):
                p.grad = g

    def gather_objects(self, items: list) -> list:
        """Every process's ``items``, concatenated in rank order (picklable objects)."""
        if not self.active:
            return list(items)
        gathered: list = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, list(items))
        return [x for part in gathered for x in part]

    def checksum_agrees(self, tensors: list[Tensor]) -> bool:
        """Whether ``tensors`` are the same on every process (a float64 sum and sum of squares, compared)."""
        if not self.active:
            return True
        local = torch.stack([torch.stack([t.double().sum(), t.double().pow(2).sum()]) for t in tensors]).sum(0)
        everyone = [None] * self.world_size
        torch.distributed.all_gather_object(everyone, local.cpu().tolist())
        return all(x == everyone[0] for x in everyone)
