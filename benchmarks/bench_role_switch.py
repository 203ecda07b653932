"""What a frozen starting adapter costs the bank: the time of a role switch and the memory it holds.

    python benchmarks/bench_role_switch.py              # SmolLM2-135M, r 8 on every linear layer (~20 s)

A warm-started run under ``model.anchor: initial`` keeps the defender's starting adapter frozen in the bank and
routes to it for every KL pass. Two banks of the main job's LoRA spec on the same base: one with no starting
adapter (the anchor is the base, adapters off), one whose defender starts from an adapter and is anchored to a
frozen copy of it. Per bank: microseconds to enter and leave ``bank.role("defender")`` and ``bank.anchor("defender")``
(medians over ``--rounds`` rounds of ``--switches`` switches, after a warm-up round), the ratio of the frozen
anchor's switch to the base anchor's, and the megabytes of the frozen adapter against the base's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from abspo.weights.bank import INITIAL_SUFFIX, AdapterBank, BankSpec, LoraSpec
from abspo.weights.models import BaseModel, load_base
from abspo.core.timing import measured, write_report


def switch_us(context, switches: int) -> float:
    start = time.perf_counter()
    for _ in range(switches):
        with context():
            pass
    return (time.perf_counter() - start) / switches * 1e6


def megabytes(params) -> float:
    return sum(p.numel() * p.element_size() for p in params) / 2**20


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/bench_role_switch.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    lora = {"r": 8, "alpha": 16}
    cold = AdapterBank(load_base(BaseModel(args.base, dtype="float32"))[0],
                       BankSpec(adapters={r: LoraSpec(**lora) for r in ("attacker", "defender")}))
    with torch.no_grad():
        for p in cold.role_parameters("defender"):
            p.add_(torch.randn_like(p) * 0.01)
    start = cold.export("defender", tempfile.mkdtemp() + "/defender")
    warm = AdapterBank(load_base(BaseModel(args.base, dtype="float32"))[0],
                       BankSpec(adapters={"attacker": LoraSpec(**lora),
                                          "defender": LoraSpec(**lora, init_from=str(start))}), anchor="initial")
    cases = {"role, no start": lambda: cold.role("defender"), "anchor = base": lambda: cold.anchor("defender"),
             "role, warm start": lambda: warm.role("defender"), "anchor = frozen start": lambda: warm.anchor("defender")}
    rounds = {name: [] for name in cases}
    with measured() as interval:
        for i in range(args.rounds + 1):
            for name, context in cases.items():
                us = switch_us(context, args.switches)
                if i:
                    rounds[name].append(us)
    medians = {name: statistics.median(v) for name, v in rounds.items()}
    frozen_mb = megabytes(warm.frozen_parameters("defender" + INITIAL_SUFFIX))
    base_mb = megabytes(p for _, p in warm.base_parameters())
    print(f"{args.base}: {len(warm._layers)} LoRA layers; foreign load {interval.foreign_cores:.2f} cores")
    for name, us in medians.items():
        print(f"  enter + leave {name:24s} {us:8.1f} us (median of {args.rounds} x {args.switches})")
    ratio = medians["anchor = frozen start"] / medians["anchor = base"]
    print(f"  frozen-start anchor / base anchor: {ratio:.2f}x")
    print(f"  frozen start {frozen_mb:.1f} MiB vs base {base_mb:.1f} MiB ({frozen_mb / base_mb:.2%})")
    report = {"base": args.base, "switch_us": medians, "frozen_over_base_anchor": ratio, "frozen_start_mib": frozen_mb,
              "base_mib": base_mb, "foreign_cores": interval.foreign_cores, "rounds": args.rounds,
              "switches": args.switches}
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
