"""Can the base play the game? Attacker format failures, forfeits and degenerate defender replies, per setting.

    python tools/turn_quality.py --seeds 32 --formats plain think_answer --temperatures 1.0 0.7

Plays the game's turns with the untrained base (fresh adapters equal the anchor) on the same seeds for every
(attacker format, temperature) setting, judges the defender's replies with the offline judge, and prints one
row per setting: the attacker's format failure and forfeit rates, the defender's degenerate rate (empty, loop,
gibberish, off-topic) with its kinds, and the judge's refusal and attack-success rates on harmful seeds. Each
row names its counts; sampling is seeded identically for every setting. This is how the main job's attacker
format and temperature were chosen (figures in docs/learning.md). ``--defender-system-prompts`` compares
defender system messages (whether a prompt makes refusals reachable for the defender's update to learn from),
``--unrevised-fraction`` sends that share of the seeds to the defender as they are, as the main job does.
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import torch

from abspo.game.seeds import SeedDataModule
from abspo.game.rules import GameConfig
from abspo.weights.models import BaseModel
from abspo.training.module import SelfPlayModule


def measure(module: SelfPlayModule, seeds, fmt: str, temperature: float, new_tokens: int,
            system_prompt: str | None = None, unrevised_fraction: float = 0.0) -> dict:
    module.game = GameConfig(attacker_format=fmt, temperature=temperature, unrevised_fraction=unrevised_fraction,
                             max_new_tokens_attacker=new_tokens, max_new_tokens_defender=new_tokens,
                             defender_system_prompt=system_prompt)
    torch.manual_seed(0)
    start = time.perf_counter()
    exchanges = module.play(seeds)
    played = [e for e in exchanges if not e.forfeited]
    harmful = [e for e in played if e.seed_harmful and e.verdict is not None and e.verdict.complete]
    kinds = collections.Counter(e.degenerate for e in played if e.degenerate)
    return {
        "format": fmt, "temperature": temperature, "games": len(exchanges),
        "attacker_format_failures": sum(not e.attacker_well_formed for e in exchanges),
        "attacker_forfeits": len(exchanges) - len(played),
        "defender_replies": len(played),
        "degenerate": sum(kinds.values()), "degenerate_kinds": dict(kinds),
        "harmful_judged": len(harmful),
        "harmful_refused": sum(e.verdict.refusal for e in harmful),
        "harmful_attack_success": sum(e.verdict.response_harmful for e in harmful),
        "seconds": round(time.perf_counter() - start, 1),
        "examples": [(e.prompt[:160], e.response[:160]) for e in exchanges[:3]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=32, help="seed requests (half harmful), all revised")
    parser.add_argument("--formats", nargs="+", default=["plain", "think_answer"])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 0.7])
    parser.add_argument("--new-tokens", type=int, default=64, help="token budget of each turn (the main job's)")
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--defender-system-prompts", nargs="+", default=[""],
                        help="defender system messages to compare ('' = the model's default)")
    parser.add_argument("--unrevised-fraction", type=float, default=0.0,
                        help="share of seeds sent to the defender as they are (the main job's: 0.5)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    module = SelfPlayModule(base=BaseModel(args.base))
    data = SeedDataModule(batch_size=args.seeds)
    data.setup()
    seeds = data.stream.batch(0).seeds
    rows = [measure(module, seeds, f, t, args.new_tokens, s or None, args.unrevised_fraction)
            | {"system": (s or "default")[:24]}
            for s in args.defender_system_prompts for f in args.formats for t in args.temperatures]
    print(f"{'system':<26}{'format':<13}{'T':>5}{'fmt fail':>12}{'forfeit':>10}{'degenerate':>13}{'refused(h)':>12}{'success(h)':>12}")
    for r in rows:
        n, d, h = r["games"], r["defender_replies"], r["harmful_judged"]
        print(f"{r['system']:<26}{r['format']:<13}{r['temperature']:>5}{r['attacker_format_failures']:>8}/{n:<3}{r['attacker_forfeits']:>6}/{n:<3}"
              f"{r['degenerate']:>9}/{d:<3}{r['harmful_refused']:>8}/{h:<3}{r['harmful_attack_success']:>8}/{h:<3}"
              f"  {r['degenerate_kinds']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
