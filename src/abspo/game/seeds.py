"""Seed requests for the game: harmful and benign, from JSONL files (or `datasets` ids).

Each batch holds a fixed share of harmful seeds (``harmful_fraction``), sampled without replacement from
each pool and reshuffled when a pool runs out. The stream is a pure function of (seed, batch index), so
the datamodule's state is one integer and a resumed run sees exactly the batches the uninterrupted run
would have seen.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from abspo.core.errors import ConfigError, did_you_mean
from abspo.core.jsonl import read_jsonl


@dataclass(frozen=True)
class Seed:
    prompt: str
    harmful: bool
    source: str = ""


@dataclass(frozen=True)
class SeedBatch:
    index: int
    """Position in the stream; the trainer records it so that a resumed run continues after it."""
    seeds: list[Seed]


def read_seed_file(path: str | Path, key: str, expect_label: str | None = None) -> list[Seed]:
    """Read a JSONL seed file (``prompt``, optional ``label``/``source``), naming file and line on bad input."""
    seeds = []
    for number, row in read_jsonl(path, key, '{"prompt": ...} object'):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ConfigError(key, f"{path}:{number} has no non-empty string field 'prompt'",
                              "give every line a \"prompt\" field")
        label = row.get("label", expect_label)
        if expect_label is not None and label != expect_label:
            raise ConfigError(key, f"{path}:{number} has label {label!r} in a {expect_label} seed list",
                              f"move the line to the right list or set its label to {expect_label!r}")
        seeds.append(Seed(row["prompt"], label == "harmful", str(row.get("source", ""))))
    return seeds


def load_seeds(paths: list[str], key: str, label: str, sources: list[str] | None) -> list[Seed]:
    """The seeds of ``paths``, those of ``sources`` only when given. A listed source that no seed comes from is
    an error (a misspelt name would otherwise train on the other sources alone, silently)."""
    seeds = [s for i, p in enumerate(paths) for s in read_seed_file(p, f"{key}[{i}]", label)]
    if sources is not None:
        found = sorted({s.source for s in seeds})
        unknown = [name for name in sources if name not in found]
        if unknown and seeds:
            raise ConfigError(f"{key}_sources", f"no {label} seed comes from {', '.join(map(repr, unknown))}",
                              f"{did_you_mean(unknown[0], found)}the sources in {key} are: {', '.join(found)}")
        seeds = [s for s in seeds if s.source in sources]
    return seeds


def harmful_per_batch(batch_size: int, harmful_fraction: float) -> int:
    """Harmful seeds in each batch: ``batch_size * harmful_fraction`` rounded half up (Python's ``round`` rounds
    half to even: 1.5 -> 2 but 2.5 -> 2)."""
    return math.floor(batch_size * harmful_fraction + 0.5)


class SeedStream(IterableDataset):
    """Endless batches of seeds with a fixed harmful share; batch ``i`` depends only on (seed, i)."""

    def __init__(self, harmful: list[Seed], benign: list[Seed], batch_size: int, harmful_fraction: float, seed: int):
        self.harmful, self.benign = harmful, benign
        self.n_harmful = harmful_per_batch(batch_size, harmful_fraction)
        self.n_benign = batch_size - self.n_harmful
        self.seed = seed
        self.start = 0
        self._orders: dict[tuple[int, int], list[int]] = {}

    def _draw(self, pool: list[Seed], tag: int, batch: int, count: int) -> list[Seed]:
        if count == 0:
            return []
        out = []
        for k in range(batch * count, (batch + 1) * count):
            epoch, offset = divmod(k, len(pool))
            out.append(pool[self._order(tag, epoch, len(pool))[offset]])
        return out

    def _order(self, tag: int, epoch: int, size: int) -> list[int]:
        key = (tag, epoch)
        if key not in self._orders:
            order = list(range(size))
            random.Random(f"{self.seed}-{tag}-{epoch}").shuffle(order)
            self._orders = {k: v for k, v in self._orders.items() if k[0] != tag}  # keep one epoch per pool
            self._orders[key] = order
        return self._orders[key]

    def batch(self, index: int) -> SeedBatch:
        seeds = self._draw(self.harmful, 0, index, self.n_harmful) + self._draw(self.benign, 1, index, self.n_benign)
        random.Random(f"{self.seed}-mix-{index}").shuffle(seeds)
        return SeedBatch(index, seeds)

    def __iter__(self):
        index = self.start
        while True:
            yield self.batch(index)
            index += 1


class SeedDataModule(L.LightningDataModule):
    """Harmful and benign seed requests for the red-team game."""

    def __init__(
        self,
        harmful: list[str] = ("data/seeds/harmful.jsonl",),
        benign: list[str] = ("data/seeds/benign.jsonl",),
        harmful_sources: list[str] | None = None,
        benign_sources: list[str] | None = None,
        batch_size: int = 8,
        harmful_fraction: float = 0.5,
        seed: int = 0,
    ):
        """
        Args:
            harmful: JSONL files of harmful seed requests (``prompt``, ``label: harmful``, ``source``).
            benign: JSONL files of benign seed requests (``label: benign``).
            harmful_sources: keep only harmful seeds whose ``source`` is listed (None keeps all). A listed
                source that no seed comes from is an error (a misspelt name).
            benign_sources: keep only benign seeds whose ``source`` is listed. The data kit's ``alpacaeval``
                seeds are CC BY-NC 4.0 (non-commercial): leave it out for commercial use.
            batch_size: games per training batch (the rollout batch).
            harmful_fraction: share of harmful seeds in every batch.
            seed: shuffling seed.
        """
        super().__init__()
        if not 0.0 <= harmful_fraction <= 1.0:
            raise ConfigError("data.harmful_fraction", f"{harmful_fraction} is not in [0, 1]", "use a share such as 0.5")
        if batch_size < 1:
            raise ConfigError("data.batch_size", f"{batch_size} is not a positive integer", "use e.g. 8")
        n_harmful = harmful_per_batch(batch_size, harmful_fraction)
        if 0 < harmful_fraction < 1 and n_harmful in (0, batch_size):
            raise ConfigError("data.harmful_fraction", f"{harmful_fraction} of a batch of {batch_size} rounds to "
                              f"{n_harmful} harmful seeds, so every batch would be {'benign' if n_harmful == 0 else 'harmful'}",
                              "raise data.batch_size, or set harmful_fraction to 0 or 1 if that is what you want")
        self.harmful_paths, self.benign_paths = list(harmful), list(benign)
        self.harmful_sources, self.benign_sources = harmful_sources, benign_sources
        self.batch_size, self.harmful_fraction, self.seed = batch_size, harmful_fraction, seed
        self.stream: SeedStream | None = None
        self.batches_served = 0

    def setup(self, stage: str | None = None) -> None:
        if self.stream is not None:
            return
        harmful = load_seeds(self.harmful_paths, "data.harmful", "harmful", self.harmful_sources) \
            if self.harmful_fraction > 0 else []
        benign = load_seeds(self.benign_paths, "data.benign", "benign", self.benign_sources) \
            if self.harmful_fraction < 1 else []
        if self.harmful_fraction > 0 and not harmful:
            raise ConfigError("data.harmful", f"harmful_fraction is {self.harmful_fraction} but no harmful seeds are left"
                              + (f" after filtering by harmful_sources={self.harmful_sources}" if self.harmful_sources else ""),
                              "add harmful seed files, widen data.harmful_sources, or set data.harmful_fraction: 0")
        if self.harmful_fraction < 1 and not benign:
            raise ConfigError("data.benign", "no benign seeds are left"
                              + (f" after filtering by benign_sources={self.benign_sources}" if self.benign_sources else ""),
                              "add benign seed files, widen data.benign_sources, or set data.harmful_fraction: 1")
        self.stream = SeedStream(harmful, benign, self.batch_size, self.harmful_fraction, self.seed)

    def train_dataloader(self) -> DataLoader:
        self.stream.start = self.batches_served
        # batch_size=None: the stream yields whole batches; the identity collate keeps them as SeedBatch.
        return DataLoader(self.stream, batch_size=None, collate_fn=lambda batch: batch)

    def state_dict(self) -> dict:
        return {"batches_served": self.batches_served}

    def load_state_dict(self, state: dict) -> None:
        self.batches_served = int(state["batches_served"])
