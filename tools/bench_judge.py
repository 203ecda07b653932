"""What the HeuristicJudge's reply heads cost: seconds per batch of exchanges with and without them.

    python tools/bench_judge.py --data data/judge_eval/dev.jsonl          # short, hand-written replies
    python tools/bench_judge.py --data data/judge_eval/xstest_dev.jsonl   # real replies, 150-300 words

Both judges run in this process on the same batches (``--batch`` exchanges each, the first ``--batches``
of the file, one warm-up call first), batches interleaved so that a change in machine load hits both alike.
The embedding cache is off, so every batch is encoded afresh as in a game. Prints the median seconds per
batch of each, their ratio, and the CPU load from other processes while each ran (on 2 cores a second torch
job doubles every figure here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from abspo.judges import HeuristicJudge
from abspo.core.timing import measured

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judge_eval import load_examples  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/judge_eval/xstest_dev.jsonl"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=9)
    args = parser.parse_args()
    rows = load_examples(args.data)
    batches = [rows[i:i + args.batch] for i in range(0, args.batch * args.batches, args.batch)]
    batches = [b for b in batches if len(b) == args.batch]
    judges = {"rules + request head": HeuristicJudge(use_reply_heads=False, cache_size=0),
              "with the reply heads": HeuristicJudge(cache_size=0)}
    encoder = next(iter(judges.values())).encoder  # one encoder, loaded once, for both
    for judge in judges.values():
        judge._encoder = encoder
        judge.score(["warm-up"], ["warm-up"])
    seconds: dict[str, list[float]] = {name: [] for name in judges}
    foreign: dict[str, list[float]] = {name: [] for name in judges}
    for batch in batches:
        for name, judge in judges.items():
            with measured() as interval:
                judge.score([r.prompt for r in batch], [r.response for r in batch])
            seconds[name].append(interval.seconds)
            foreign[name].append(interval.foreign_cores)
    print(f"{args.data}: {len(batches)} batches of {args.batch} exchanges")
    for name in judges:
        print(f"  {name:22s} median {statistics.median(seconds[name]):.3f} s/batch   "
              f"foreign CPU load {statistics.mean(foreign[name]):.2f} cores")
    names = list(judges)
    ratio = statistics.median(seconds[names[1]]) / statistics.median(seconds[names[0]])
    print(f"  ratio with/without the reply heads: {ratio:.2f}")


if __name__ == "__main__":
    main()
