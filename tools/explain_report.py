"""Why the judge said what it said: the HeuristicJudge's evidence for every exchange of a safety report.

A rate says how many answers were called refusals; this says what those refusals were (a decline, a
repetition loop, a reply off the topic, text the rules cannot read). Per benchmark it counts the judge's
reasons (``HeuristicJudge.explain``) and, for each reason, how many replies are repetition loops by the
report's own rule (``abspo.rl.degenerate``). The figures of docs/safety-eval.md come from:

    .venv/bin/python tools/explain_report.py checkpoints/smollm2-cpu/eval/base checkpoints/smollm2-cpu/eval/step-40
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from abspo.rl.degenerate import repetition_loop
from abspo.judges import HeuristicJudge


def reason(evidence) -> str:
    if evidence.refusal.refusal is None:
        return "unreadable"
    return evidence.refusal.reason if evidence.refusal.refusal else "answer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="report folders holding exchanges.jsonl")
    args = parser.parse_args()
    judge = HeuristicJudge()
    for folder in args.reports:
        rows = [json.loads(line) for line in (Path(folder) / "exchanges.jsonl").read_text(encoding="utf-8").splitlines()]
        evidence = judge.explain([r["request"] for r in rows], [r["response"] for r in rows], [r["harmful"] for r in rows])
        counts, loops = Counter(), Counter()
        for row, ev in zip(rows, evidence):
            key = (row["benchmark"], reason(ev))
            counts[key] += 1
            loops[key] += repetition_loop(row["response"])
        print(f"{folder}: benchmark, the judge's reason, replies (of which repetition loops)")
        for key in sorted(counts):
            print(f"  {key[0]:12s} {key[1]:40s} {counts[key]:3d} ({loops[key]})")


if __name__ == "__main__":
    main()
