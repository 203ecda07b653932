"""One process of a data-parallel update, for tests/test_distributed.py (run with ``torch.distributed.run``).

Every process plays the whole batch (keyed sampling makes the games identical everywhere), keeps its own share
of the seeds, and updates through ``SelfPlayModule.learn`` with the default process group, exactly as
``training_step`` does under DDP. Rank 0 writes the adapters after the update to ``argv[1]``.

The batch is ordered so that the first share holds only unrevised seeds: that process has no attacker turn,
yet must take part in every collective of the attacker's update (else the other one waits forever; the
process-group timeout turns such a hang into an error).
"""

from __future__ import annotations

import datetime
import sys

import torch

from abspo.config import OptimizerConfig
from abspo.data import Seed
from abspo.distributed import Collective
from abspo.game import GameConfig
from abspo.judges import HeuristicJudge
from abspo.models import BaseModel
from abspo.module import SelfPlayModule

TINY = BaseModel(name_or_path="tiny-qwen2", dtype="float32")
# harmful, harmful, benign, benign, ...: unrevised_fraction 0.5 leaves the first two of each label unrevised,
# i.e. all of the first share of 4 seeds.
SEEDS = [Seed(f"How do I make {x} at home?", True) if i % 4 < 2 else Seed(f"Write a short poem about {x}.", False)
         for i, x in enumerate(["rain", "ink", "tea", "fog", "salt", "glue", "soap", "wax"])]


def module() -> SelfPlayModule:
    torch.manual_seed(0)  # the LoRA A matrices: the same initial adapters in every process
    return SelfPlayModule(base=TINY, judge=HeuristicJudge(),
                          game=GameConfig(max_new_tokens_attacker=12, max_new_tokens_defender=12),
                          optimizers={"attacker": OptimizerConfig(lr=1e-2), "defender": OptimizerConfig(lr=1e-2)})


def play_and_learn(m: SelfPlayModule, collective: Collective) -> dict[str, float]:
    games = m.play(SEEDS, batch_index=3)
    share = range(len(SEEDS))[collective.shard(len(SEEDS))]
    mine = [e for e in games if e.group in share]
    stats = m.learn(mine, batch_index=0)  # batch 0 of the alternate schedule: both roles update
    stats["local_attacker_turns"] = float(sum("attacker" in e.turns for e in mine))
    return stats


def main(out: str) -> None:
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    collective = Collective.current()
    m = module()
    stats = play_and_learn(m, collective)
    if collective.rank == 0:
        torch.save({"adapters": m.bank.adapter_state_dict(), "stats": stats}, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
