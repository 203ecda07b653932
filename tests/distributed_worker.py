"""One process of a data-parallel update, for tests/test_distributed.py (run with ``torch.distributed.run``).

``ddp``: every process holds the whole model and plays its share of the seeds, then updates through
``SelfPlayModule.learn`` with the default process group, exactly as ``training_step`` does under DDP.
``fsdp2``: the same with the bank sharded (``abspo.weights.sharding.shard_bank``), so generation, scoring and the
gradient pass run FSDP2's collectives, and micro-batches capped in tokens (``FSDP2_MICRO_BATCH_TOKENS``), so that
the processes cut their rows into different numbers of micro-batches and the one with fewer must run empty
ones as long as the other runs (the update is the same as uncapped: the cut changes no gradient); then one more
generation with a different token budget on each process
(3 vs 9: one process finishes early and must keep stepping with the other). The adapters (gathered) and the
update's statistics of rank 0 go to ``argv[2]``.

The batch is ordered so that the first share holds only unrevised seeds: that process has no attacker turn,
yet must take part in every collective of the attacker's update (else the other one waits forever; the
process-group timeout turns such a hang into an error).
"""

from __future__ import annotations

import datetime
import sys

import torch
from lightning.pytorch.callbacks import Callback

from abspo.core.config import OptimizerConfig
from abspo.game.seeds import Seed
from abspo.weights.distributed import Collective
from abspo.game.rules import GameConfig
from abspo.judges import HeuristicJudge
from abspo.training.lockstep import Lockstep
from abspo.weights.models import BaseModel
from abspo.training.module import SelfPlayModule
from abspo.rl.rollout import generate
from abspo.weights.sharding import full_tensor, shard_bank
from tests.collective_worker import finish

TINY = BaseModel(name_or_path="tiny-qwen2", dtype="float32")
FSDP2_MICRO_BATCH_TOKENS = 100
# harmful at 0, 2, 4, 6, 7, benign at 1, 3, 5: unrevised_fraction 0.8 leaves the first 4 harmful and the first 2
# benign unrevised, i.e. all of rank 0's interleaved share (0, 2, 4, 6); rank 1 revises seeds 5 and 7.
SEEDS = [Seed(f"Write a short poem about {x}.", False) if i in (1, 3, 5) else Seed(f"How do I make {x} at home?", True)
         for i, x in enumerate(["rain", "ink", "tea", "fog", "salt", "glue", "soap", "wax"])]


class SaveAndStopAfterBatch(Callback):
    """Save the run to ``path`` after batch ``batch`` and stop there: a checkpoint at any batch, e.g. in the
    middle of an ``accumulate_batches`` cycle (a run's own checkpoints fall on optimizer steps)."""

    def __init__(self, batch: int, path: str):
        self.batch, self.path = batch, path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def module() -> SelfPlayModule:
    torch.manual_seed(0)  # the LoRA A matrices: the same initial adapters in every process
    return SelfPlayModule(base=TINY, judge=HeuristicJudge(),
                          game=GameConfig(max_new_tokens_attacker=12, max_new_tokens_defender=12,
                                          unrevised_fraction=0.8),
                          optimizers={"attacker": OptimizerConfig(lr=1e-2), "defender": OptimizerConfig(lr=1e-2)})


def play_and_learn(m: SelfPlayModule, collective: Collective) -> dict[str, float]:
    share = range(len(SEEDS))[collective.shard(len(SEEDS))]
    mine = m.play_games([e for e in m.plan(SEEDS) if e.group in share], batch_index=3)
    stats = m.learn(mine, batch_index=0)  # batch 0 of the alternate schedule: both roles update
    stats["local_attacker_turns"] = float(sum("attacker" in e.turns for e in mine))
    return stats


def main(mode: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    collective = Collective.current()
    m = module()
    cuts = []
    if mode == "fsdp2":
        shard_bank(m.bank, collective.world_size, "cpu")
        m.layout = Lockstep()
        m.algorithm.micro_batch_tokens = FSDP2_MICRO_BATCH_TOKENS
        cut = m.updater.micro_batch_rows
        m.updater.micro_batch_rows = lambda *args: cuts.append(cut(*args)) or cuts[-1]
    stats = play_and_learn(m, collective)
    stats["micro_batches"] = [[len(rows) for rows in c] for c in cuts]
    adapters = {k: full_tensor(v) for k, v in m.bank.adapter_state_dict().items()}
    if mode == "fsdp2":
        with m.bank.role("defender") as model:
            gen = generate(model, m.tokenizer, ["Hello"], 3 if collective.rank == 0 else 9, 1.0, synced_gpus=True,
                           keys=[collective.rank])
        stats["uneven_generation_tokens"] = float(len(gen.completion_ids[0]))
    if collective.rank == 0:
        torch.save({"adapters": adapters, "stats": stats}, out)
    finish()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

