"""How the processes of a run keep step with each other: the one seam between the RL math and the strategy.

Two layouts, chosen once by the module (``configure_model``):

- :class:`Replicated`: one process, or DDP. Every process holds whole adapters and runs only the forwards of
  its own share of the games; each adapter's gradient is summed over processes once, before its optimizer step
  (:meth:`abspo.weights.distributed.Collective.sum_grads_`).
- :class:`Lockstep`: FSDP2. Every forward is a collective (a layer's weights are all-gathered inside it), so
  every process must run the same number of forwards, whether or not it has rows to score: a process out of
  work runs throw-away passes on an idle batch. Gradients arrive reduce-scattered and averaged over processes.

The update, the play loop and the checkpoint hooks ask the layout (how many micro-batches, which no-grad mode,
what gradient scale, who sums the gradients) instead of branching on the strategy, so the RL math reads the same
for one process, DDP and FSDP2.
"""

from __future__ import annotations

import contextlib

import torch

from abspo.weights.distributed import Collective


class Replicated:
    """One process or DDP: each process runs only its own forwards."""

    sharded = False
    """Whether the adapters are sharded over processes (FSDP2): each holds a shard, not a copy."""

    def no_grad(self) -> contextlib.AbstractContextManager:
        """``inference_mode`` for passes whose outputs never enter a gradient (cheaper than ``no_grad``)."""
        return torch.inference_mode()

    def micro_batch_rows(self, chunks: list[list[int]]) -> list[list[int]]:
        """The micro-batches this process runs, given its own ``chunks`` of rows: just those."""
        return chunks

    def generates_idle(self) -> bool:
        """Whether a process with no prompt of a role must still take part in that role's generation."""
        return False

    def gradient_scale(self) -> int:
        """What each micro-batch's loss is multiplied by so that the gradient is the one-process sum."""
        return 1

    def sum_gradients_(self, params: list[torch.nn.Parameter]) -> None:
        """Sum each parameter's gradient over processes, in place (a no-op on one process)."""
        Collective.current().sum_grads_(params)


class Lockstep(Replicated):
    """FSDP2: every process runs every forward, in the same order (see the module docstring)."""

    sharded = True

    def no_grad(self) -> contextlib.AbstractContextManager:
        # FSDP2's gathered parameters must stay ordinary tensors: inference tensors cannot be resharded.
        return torch.no_grad()

    def micro_batch_rows(self, chunks: list[list[int]]) -> list[list[int]]:
        """``chunks`` followed by empty ones up to the most any process has: each empty one is an idle pass."""
        most = int(Collective.current().max(torch.tensor(len(chunks))))
        return chunks + [[] for _ in range(most - len(chunks))]

    def generates_idle(self) -> bool:
        return True  # generation is lockstep too (``synced_gpus``)

    def gradient_scale(self) -> int:
        return Collective.current().world_size  # FSDP2 averages gradients over processes; the math sums them

    def sum_gradients_(self, params: list[torch.nn.Parameter]) -> None:
        pass  # FSDP2 has reduce-scattered the sums already
