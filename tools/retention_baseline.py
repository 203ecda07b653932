"""Score the frozen base (the retention anchor) on a reasoning task: the figures in docs/evaluation.md.

    .venv/bin/python tools/retention_baseline.py --task arithmetic --n 60
    .venv/bin/python tools/retention_baseline.py --task gsm8k --n 50

The base is loaded exactly as training loads it (``abspo.weights.models.BaseModel``, default SmolLM2-135M-Instruct in
bfloat16) and scored with the code the ``ReasoningRetention`` callback runs, so the numbers are the anchor
scores a run logs as ``retention/anchor/score``.
"""

from __future__ import annotations

import argparse
import json

import torch

from abspo.evaluation.answers import extract_answer
from abspo.evaluation.tasks import TASK_NAMES, ExactMatchTask, TaskSpec, build_task, evaluate
from abspo.weights.models import BaseModel, load_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASK_NAMES, default="arithmetic")
    parser.add_argument("--path", default=None, help="JSONL file (gsm8k, multiple_choice)")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base", default=BaseModel.name_or_path)
    parser.add_argument("--dtype", default=BaseModel.dtype)
    parser.add_argument("--show", type=int, default=0, help="print the first SHOW items with their outputs")
    args = parser.parse_args()

    model, tokenizer = load_base(BaseModel(name_or_path=args.base, dtype=args.dtype))
    task = build_task(TaskSpec(args.task, args.path, args.n, args.seed), args.max_new_tokens, key="--task")
    with torch.no_grad():
        result = evaluate(task, model, tokenizer, args.batch_size)
    for item, ok, output in list(zip(task.items, result.correct, result.outputs))[: args.show]:
        target = getattr(item, "target", None) or item.choices[item.answer]
        print(json.dumps({"question": item.question[:80], "target": target, "correct": ok, "output": output,
                          "extracted": extract_answer(output) if isinstance(task, ExactMatchTask) else None}))
    print(json.dumps({"base": args.base, "dtype": args.dtype, "task": args.task, "n": result.scored,
                      "seed": args.seed, "max_new_tokens": getattr(task, "max_new_tokens", None),
                      "correct": sum(result.correct), "score": round(result.score, 4),
                      "seconds": round(result.seconds, 1), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
