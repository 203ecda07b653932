"""What CollapseDiagnostics costs next to the training step it watches, on the main job's model and settings.

    python tools/bench_diagnostics.py --config configs/smollm2-cpu.yaml --repeats 3

Builds the config's module (the real SmolLM2-135M for the main job), then for each of ``repeats`` batches
(after one warm-up batch) times the step (play: both roles' turns and the judge; learn: both updates) and one
measurement of each diagnostic figure on that batch's games, in the same process. Prints the medians, the
ratio of the diagnostics to the step, what that ratio means at ``every_n_batches`` 10 (the default), and the
CPU load from other processes while it ran (cores busy outside this process: on 2 cores a second torch job
multiplies every figure here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from abspo.callbacks.collapse import CollapseDiagnostics
from abspo.core.timing import measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=None, help="training config(s), as for abspo fit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe-games", type=int, default=8)
    args = parser.parse_args()
    from abspo.cli import cli_main

    configs = args.config or ["configs/smollm2-cpu.yaml"]
    cli = cli_main([x for c in configs for x in ("--config", c)], run=False)
    module, data = cli.model, cli.datamodule
    data.setup("fit")
    diagnostics = CollapseDiagnostics(probe_games=args.probe_games)
    rows = []
    with measured() as interval:
        for index in range(args.repeats + 1):
            torch.manual_seed(index)
            start = time.perf_counter()
            exchanges = module.play(data.stream.batch(index).seeds, batch_index=index)
            module.learn(exchanges, index)
            step = time.perf_counter() - start
            module.last_exchanges = exchanges  # as training_step leaves it: the gradients reuse the update's rollouts
            diagnostics.seconds_by_figure = {}
            start = time.perf_counter()
            diagnostics.measure(module, exchanges, index)
            row = {"step_s": step, "diagnostics_s": time.perf_counter() - start,
                   **{f"{k}_s": v for k, v in diagnostics.seconds_by_figure.items()}}
            if index:  # the first batch warms up kernels and loads the judge and the encoder
                rows.append(row)
    foreign = interval.foreign_cores
    medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"{' + '.join(configs)}: medians of {args.repeats} batches ({module.game.max_new_tokens_attacker}+"
          f"{module.game.max_new_tokens_defender} new tokens, {data.batch_size} games, {args.probe_games} probe games)")
    for key, value in medians.items():
        print(f"  {key:<20}{value:8.2f}")
    ratio = medians["diagnostics_s"] / medians["step_s"]
    print(f"  diagnostics / step  {ratio:8.2f}  -> {100 * ratio / 10:.1f}% of training at every_n_batches 10")
    print(f"  foreign CPU load    {foreign:8.2f} cores busy outside this process (of {os.cpu_count()})")


if __name__ == "__main__":
    main()
