"""Score the frozen base (the retention anchor) on a reasoning task: the figures in docs/evaluation.md.

    .venv/bin/python tools/retention_baseline.py --task arithmetic --n 60
    .venv/bin/python tools/retention_baseline.py --task gsm8k --n 50

The base is loaded exactly as training loads it (``abspo.models.BaseModel``, default SmolLM2-135M-Instruct in
bfloat16) and scored with the code the ``ReasoningRetention`` callback runs, so the numbers are the anchor
scores a run logs as ``retention/anchor/score``.
"""

from __future__ import annotations

import argparse
import json

import torch

from abspo.evaluation.answers import extract_answer
from abspo.evaluation.tasks import TASK_NAMES, ExactMatchTask, TaskSpec, build_task, evaluate
from abspo.models import BaseModel, load_base
from abspo.rollout import generate


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
    parser.add_argument("--show", type=int, default=0, help="print this many outputs (exact-match tasks)")
    args = parser.parse_args()

    model, tokenizer = load_base(BaseModel(name_or_path=args.base, dtype=args.dtype))
    task = build_task(TaskSpec(args.task, args.path, args.n, args.seed), args.max_new_tokens, key="--task")
    with torch.no_grad():
        result = evaluate(task, model, tokenizer, args.batch_size)
    if args.show and isinstance(task, ExactMatchTask):
        # Regenerated in one batch: under bfloat16 a different batch layout can change a greedy output.
        items = task.items[: args.show]
        gen = generate(model, tokenizer, task.prompts(tokenizer, items), task.max_new_tokens, temperature=0.0)
        for item, text in zip(items, gen.texts):
            print(json.dumps({"question": item.question[:80], "target": item.target,
                              "extracted": extract_answer(text), "output": text}))
    print(json.dumps({"base": args.base, "dtype": args.dtype, "task": args.task, "n": result.scored,
                      "seed": args.seed, "max_new_tokens": getattr(task, "max_new_tokens", None),
                      "correct": sum(result.correct), "score": round(result.score, 4),
                      "seconds": round(result.seconds, 1), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
