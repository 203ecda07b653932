"""Time the parts of one self-play step on the real SmolLM2-135M, for each base dtype, in one process.

    python tools/bench_step.py --repeats 3 --batch-size 8 --new-tokens 64

For each dtype it plays ``repeats`` batches (after one warm-up batch; the dtypes take turns batch by batch,
so load from other processes hits them alike) and reports medians of: game play
(attacker + defender sampling + judge), generated tokens per second, the attacker update and the defender
update; then the ratios of each dtype to the first one (the baseline, float32 by default). The machine is
shared and noisy: compare medians from one invocation, not across invocations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from abspo.game.seeds import SeedDataModule
from abspo.game.rules import GameConfig
from abspo.weights.models import BaseModel
from abspo.training.module import SelfPlayModule


def make_module(dtype: str, args) -> tuple[SelfPlayModule, list, list]:
    game = GameConfig(max_new_tokens_attacker=args.new_tokens, max_new_tokens_defender=args.new_tokens)
    module = SelfPlayModule(base=BaseModel(dtype=dtype), game=game)
    optimizers, schedulers = module.configure_optimizers()
    return module, optimizers, schedulers


def one_batch(module, optimizers, schedulers, seeds, index: int) -> dict[str, float]:
    torch.manual_seed(index)
    module.sampler.reset()
    start = time.perf_counter()
    exchanges = module.play(seeds)
    play = time.perf_counter() - start
    row = {"play_s": play, "gen_tokens_per_s": module.sampler.generated_tokens / play}
    for adapter, opt, sched in zip(module.adapters, optimizers, schedulers):
        start = time.perf_counter()
        module.updater.update(adapter, [adapter], exchanges, opt, sched)
        row[f"update_{adapter}_s"] = time.perf_counter() - start
    return row


def bench(args) -> dict[str, dict[str, float]]:
    """Interleave the dtypes batch by batch, so that load from other processes hits them alike."""
    modules = {dtype: make_module(dtype, args) for dtype in args.dtypes}
    data = SeedDataModule(batch_size=args.batch_size)
    data.setup()
    rows: dict[str, list[dict[str, float]]] = {dtype: [] for dtype in args.dtypes}
    for index in range(args.repeats + 1):
        seeds = data.stream.batch(index).seeds
        for dtype, (module, optimizers, schedulers) in modules.items():
            row = one_batch(module, optimizers, schedulers, seeds, index)
            if index:  # the first batch warms up kernels and loads the judge
                rows[dtype].append(row)
    return {dtype: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for dtype, rs in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="first one is the baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    results = bench(args)
    keys = list(next(iter(results.values())))
    baseline = results[args.dtypes[0]]
    print(f"SmolLM2-135M, {args.batch_size} games/batch, {args.new_tokens} new tokens/turn, "
          f"{torch.get_num_threads()} threads, medians of {args.repeats}")
    print(f"{'dtype':<10}" + "".join(f"{k:>22}" for k in keys))
    for dtype, row in results.items():
        print(f"{dtype:<10}" + "".join(f"{row[k]:>22.2f}" for k in keys))
        if dtype != args.dtypes[0]:
            print(f"{'  ratio':<10}" + "".join(f"{row[k] / baseline[k]:>22.2f}" for k in keys))


if __name__ == "__main__":
    main()
