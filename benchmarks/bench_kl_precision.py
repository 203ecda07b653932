"""The KL to the anchor on a bfloat16 base: its rounding floor with the passes in the model's arithmetic, against
``kl_precision: float32`` (abspo.rl.precision), and what the float32 passes cost; in one process, calls interleaved.

    python benchmarks/bench_kl_precision.py          # SmolLM2-135M on this CPU (~3 min)

The micro-batch is the one ``benchmarks/bench_scoring.py`` scores (``--rows`` defender prompts of the seed stream
with completions of up to ``--new-tokens`` tokens). The defender's LoRA (r 8, every linear layer) is perturbed by
``--scale`` (a near-zero adapter, as at the start of a run: its true KL to the anchor is tiny). For three ways of
scoring the role and the anchor (no gradient, as the update's KL passes run):

* **model**: the bfloat16 base under autocast, as ``trainer.precision: bf16-mixed`` runs it;
* **float32**: the same bfloat16 weights in float32 arithmetic (``float32_compute``);
* **exact**: a float32 copy of the same weight values (the reference; twice the memory).

it prints the KL per completion token (k3, summed in float64: k3 of a tiny log-ratio underflows in float32) and
the mean |log-ratio| (the k1 terms the reward sums), and the seconds of one role + anchor scoring pass, medians
of ``--rounds`` rounds after a warm-up, with the CPU cores other processes kept busy meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
from pathlib import Path

import torch

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.weights.models import BaseModel, load_base
from abspo.rl.precision import float32_compute
from abspo.rl.rollout import completion_logprobs
from abspo.core.timing import measured, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the package beside it
from benchmarks.bench_scoring import micro_batch  # noqa: E402

WAYS = ("model", "float32", "exact")


def scored(bank: AdapterBank, batch, way: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the batch's completions under the defender and under the anchor."""
    arithmetic = {"model": lambda: torch.autocast("cpu", dtype=torch.bfloat16), "float32": lambda: float32_compute("cpu"),
                  "exact": contextlib.nullcontext}[way]
    with torch.inference_mode():
        with bank.role("defender") as model, arithmetic():
            role, _ = completion_logprobs(model, batch)
        with bank.anchor() as model, arithmetic():
            anchor, _ = completion_logprobs(model, batch)
    return role, anchor


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model.base.name_or_path")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--scale", type=float, default=1e-4, help="std of the noise added to the defender's LoRA")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up round")
    parser.add_argument("--json", default="benchmarks/results/bench_kl_precision.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    base, tokenizer = load_base(BaseModel(name_or_path=args.model, dtype="bfloat16"))
    banks = {"model": AdapterBank(base, BankSpec(adapters={r: LoraSpec(r=8, alpha=16) for r in ("attacker", "defender")}))}
    with torch.no_grad():
        for p in banks["model"].role_parameters("defender"):
            p.add_(torch.randn_like(p) * args.scale)
    banks["float32"] = banks["model"]
    banks["exact"] = copy.deepcopy(banks["model"]).float()
    batch = micro_batch(tokenizer, args.rows, args.new_tokens)
    mask = batch.completion_mask
    kl = {}
    for way in WAYS:
        role, anchor = scored(banks[way], batch, way)
        d = (anchor - role).double()[mask]
        kl[way] = {"k3_per_token": float((d.exp() - d - 1).mean()), "mean_abs_log_ratio": float(d.abs().mean())}
    times, foreign = {w: [] for w in WAYS}, []
    for index in range(args.rounds + 1):
        for way in WAYS:
            with measured() as interval:
                scored(banks[way], batch, way)
            if index:  # round 0 warms up
                times[way].append(interval.seconds)
                foreign.append(interval.foreign_cores)
    report = {"args": vars(args), "kl": kl, "seconds": {w: statistics.median(t) for w, t in times.items()},
              "foreign_cores_max": max(foreign)}
    print(f"\n{args.model}, bfloat16 base, defender LoRA perturbed by {args.scale:g}; {args.rows} rows, "
          f"{int(mask.sum())} completion tokens; medians of {args.rounds} rounds, other processes up to "
          f"{report['foreign_cores_max']:.2f} cores")
    print(f"{'arithmetic':<10} {'k3 per token':>13} {'mean |log ratio|':>17} {'role + anchor pass s':>21}")
    for way in WAYS:
        print(f"{way:<10} {kl[way]['k3_per_token']:13.2e} {kl[way]['mean_abs_log_ratio']:17.2e} "
              f"{report['seconds'][way]:21.3f}")
    print(f"float32 / model: {report['seconds']['float32'] / report['seconds']['model']:.2f}x the time", flush=True)
    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
