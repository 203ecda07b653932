"""Scoring a micro-batch: log-probs computed inside the LM head against log-probs from the model's logits, in one
process, calls interleaved.

    python benchmarks/bench_scoring.py                  # SmolLM2-135M on this CPU, float32 and bf16 (~4 min)

The micro-batch is what the main job's defender update scores: ``--rows`` defender prompts of the seed stream
(the chat template, system prompt included), each with a completion of ``--new-tokens`` tokens or fewer (lengths
spread evenly down to a quarter of it, so rows pad), through a LoRA bank (r 8 on every linear layer, perturbed so
the adapter path does real work). Two paths (``abspo.rl.rollout.completion_logprobs``):

* **logits**: the model's forward returns the [rows, completion, vocabulary] logits; the log-softmax works through
  float32 chunks of them (``abspo.rl.logprobs.TokenLogprobs``). The logits and their gradient stay alive.
* **head**: the LM head computes each chunk's logits from its input and keeps none
  (``abspo.rl.logprobs.HeadTokenLogprobs``): backward computes the chunk's logits again (one more head matmul),
  and padding rows are not scored at all.

Per path and dtype: seconds of a gradient pass (forward, log-probs, backward of a weighted sum) and of a no-grad
scoring pass (``inference_mode``, as the anchor pass runs), medians over ``--rounds`` rounds after a warm-up round,
paths interleaved within a round; the CPU cores other processes kept busy meanwhile; and the peak of tensor memory
that each pass allocates (:func:`abspo.core.timing.tensor_peak`, measured on a separate call: the profiler slows the
pass it watches).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.game.seeds import SeedDataModule
from abspo.game.rules import GameConfig, defender_prompt
from abspo.weights.models import BaseModel, load_base
from abspo.rl.rollout import build_scoring_batch, completion_logprobs
from abspo.core.timing import measured, tensor_peak, write_report

PATHS = {"logits": False, "head": True}


def micro_batch(tokenizer, rows: int, new_tokens: int):
    """``rows`` defender prompts with completions from ``new_tokens`` tokens down to a quarter of it."""
    data = SeedDataModule(batch_size=rows)
    data.setup()
    prompts = [tokenizer(defender_prompt(tokenizer, GameConfig(), s.prompt), add_special_tokens=False)["input_ids"]
               for s in data.stream.batch(0).seeds]
    g = torch.Generator().manual_seed(0)
    lengths = torch.linspace(new_tokens, max(1, new_tokens // 4), rows).round().long().tolist()
    completions = [torch.randint(100, len(tokenizer) - 100, (n,), generator=g).tolist() for n in lengths]
    return build_scoring_batch(prompts, completions, tokenizer.pad_token_id)


def gradient_pass(model, batch, fused: bool) -> None:
    logp, _ = completion_logprobs(model, batch, with_entropy=True, temperature=0.7, fused=fused)
    weights = torch.linspace(-1.0, 1.0, logp.numel()).view_as(logp)
    (logp * weights).sum().backward()


def scoring_pass(model, batch, fused: bool) -> None:
    with torch.inference_mode():
        completion_logprobs(model, batch, temperature=0.7, fused=fused)


def figures(bank, batch, dtype: str, rounds: int) -> dict:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    passes = {"gradient": gradient_pass, "no-grad": scoring_pass}
    times = {(p, n): [] for p in PATHS for n in passes}
    foreign = []
    with bank.role("defender") as model, bank.update_mode(), autocast:
        for index in range(rounds + 1):
            for path, fused in PATHS.items():
                for name, fn in passes.items():
                    with measured() as interval:
                        fn(model, batch, fused)
                    bank.model.zero_grad(set_to_none=True)
                    if index:  # round 0 warms up
                        times[path, name].append(interval.seconds)
                        foreign.append(interval.foreign_cores)
        peaks = {}
        for path, fused in PATHS.items():
            for name, fn in passes.items():
                with tensor_peak() as peak:
                    fn(model, batch, fused)
                bank.model.zero_grad(set_to_none=True)
                peaks[path, name] = peak.peak_mib
    out = {path: {f"{name}_s": statistics.median(times[path, name]) for name in passes}
           | {f"{name}_peak_mib": peaks[path, name] for name in passes} for path in PATHS}
    out["ratios"] = {f"{name}_s logits/head": out["logits"][f"{name}_s"] / out["head"][f"{name}_s"]
                     for name in passes} | {f"{name}_peak head/logits": out["head"][f"{name}_peak_mib"]
                                            / out["logits"][f"{name}_peak_mib"] for name in passes}
    out["foreign_cores_max"] = max(foreign)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model.base.name_or_path")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--rows", type=int, default=8, help="the micro-batch (algorithm.micro_batch_size)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up round")
    parser.add_argument("--json", default="benchmarks/results/bench_scoring.json")
    args = parser.parse_args(argv)
    report = {"args": vars(args), "threads": torch.get_num_threads(), "dtypes": {}}
    for dtype in args.dtypes:
        torch.manual_seed(0)
        base, tokenizer = load_base(BaseModel(name_or_path=args.model, dtype=dtype))
        bank = AdapterBank(base, BankSpec(adapters={r: LoraSpec(r=8, alpha=16) for r in ("attacker", "defender")}))
        with torch.no_grad():
            for p in bank.role_parameters("defender"):
                p.add_(torch.randn_like(p) * 0.02)
        batch = micro_batch(tokenizer, args.rows, args.new_tokens)
        row = figures(bank, batch, dtype, args.rounds)
        report["dtypes"][dtype] = row
        print(f"\n{args.model} ({dtype}{' + autocast' if dtype == 'bfloat16' else ''}), {args.rows} rows x "
              f"{tuple(batch.input_ids.shape)[1]} tokens ({int(batch.completion_mask.sum())} completion tokens of "
              f"{batch.completion_mask.numel()}), medians of {args.rounds} rounds, other processes up to "
              f"{row['foreign_cores_max']:.2f} cores")
        print(f"{'path':<8} {'gradient s':>11} {'no-grad s':>10} {'gradient peak MiB':>18} {'no-grad peak MiB':>17}")
        for path in PATHS:
            r = row[path]
            print(f"{path:<8} {r['gradient_s']:11.3f} {r['no-grad_s']:10.3f} {r['gradient_peak_mib']:18.0f} "
                  f"{r['no-grad_peak_mib']:17.0f}")
        print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in row["ratios"].items()), flush=True)
    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
