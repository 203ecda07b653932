"""One role's update, abspo against TRL's GRPOTrainer, in one process, steps interleaved; then memory per mode.

    pip install -e ".[bench]"            # TRL, for the comparison only (never a runtime dependency)
    python benchmarks/bench_update.py    # ~65 min on 2 CPU cores (~40 with --no-memory, ~25 with --memory-only)

The same work on both sides: SmolLM2-135M-Instruct, a LoRA adapter (r 16, alpha 16, every linear layer), 8 seed
prompts x 4 samples (GRPO groups of 4, the defender's turns: ``unrevised_fraction`` 1), at most 64 new tokens at
temperature 1 with no top-k, rewards from abspo's own judge and reward table on both sides, the KL to the frozen
base as the k3 estimator in the loss with coefficient 0.01, token-mean loss, one update epoch, AdamW, gradient
clipping at 1.0. TRL trains on the step's 32 completions in ``micro_batch`` rows per forward (gradient
accumulation), abspo in micro-batches of the same size.

Steps alternate: TRL's step k, then (inside TRL's ``on_step_end`` callback) abspo's step k, so that load from other
processes hits both alike; the first step of each is a warm-up and is not counted. Each phase is timed (abspo: its
own :class:`abspo.core.timing.PhaseClock`; TRL: its methods wrapped), with the CPU cores other processes kept busy.
Printed: medians per phase, completion tokens trained per second and the ratio abspo / TRL, rollout seconds per
decoding step against a bare ``generate`` of the same batch, and (``--memory``, separate processes) the peak memory
of two whole ABS steps per ``model.mode``: of tensors (:func:`abspo.core.timing.tensor_peak`, what a GPU's peak memory
means) and of the process (RSS). Everything also goes to ``--json``: ``--memory-only`` updates its memory part,
``--no-memory`` the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from abspo.weights.bank import BankSpec, LoraSpec
from abspo.core.config import AlgorithmConfig, OptimizerConfig
from abspo.game.seeds import SeedDataModule
from abspo.game.rules import Exchange, GameConfig, defender_prompt, read_defender_turn
from abspo.weights.models import BaseModel, load_base
from abspo.training.module import SelfPlayModule
from abspo.rl.rollout import sampling_config
from abspo.core.timing import measured, tensor_peak, write_report

LR = 1e-4
PHASES = ("rollout", "judge", "no_grad_passes", "gradient_pass", "optimizer")


@dataclass
class Series:
    """Per-step rows of one system; medians over the rows."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)

    def median(self) -> dict[str, float]:
        keys = [k for k in self.rows[0] if all(k in r for r in self.rows)]
        return {k: statistics.median(r[k] for r in self.rows) for k in keys}

    def max(self, key: str) -> float:
        return max(r[key] for r in self.rows)


def abspo_module(dtype: str, args) -> SelfPlayModule:
    game = GameConfig(max_new_tokens_defender=args.new_tokens, unrevised_fraction=1.0)
    algorithm = AlgorithmConfig(estimator="grpo", group_size=args.group, kl_coef=0.01, kl_mode="loss_k3",
                                micro_batch_size=args.micro_batch, max_grad_norm=1.0)
    bank = BankSpec(adapters={r: LoraSpec(r=16, alpha=16) for r in ("attacker", "defender")})
    optimizers = {r: OptimizerConfig(lr=LR) for r in ("attacker", "defender")}
    return SelfPlayModule(base=BaseModel(dtype=dtype), bank=bank, optimizers=optimizers, game=game,
                          algorithm=algorithm)


def autocast(dtype: str):
    """bf16: the whole step under CPU autocast, as ``trainer.precision: bf16-mixed`` runs it (and TRL's bf16)."""
    return torch.autocast("cpu", torch.bfloat16) if dtype == "bfloat16" else torch.autocast("cpu", enabled=False)


def abspo_step(module: SelfPlayModule, seeds, index: int, dtype: str) -> dict[str, float]:
    module.clock.take()
    with measured() as m, autocast(dtype):
        exchanges = module.play(seeds, batch_index=index)
        stats = module.learn(exchanges, index)
    phases = module.clock.take()
    tokens = sum(len(e.turns["defender"][1]) for e in exchanges if "defender" in e.turns)
    steps = max(len(e.turns["defender"][1]) for e in exchanges if "defender" in e.turns)
    return {
        "step_s": m.seconds, "foreign_cores": m.foreign_cores, "peak_rss_mib": m.peak_rss_mib,
        "rollout": phases.get("rollout/defender", 0.0), "judge": phases.get("judge", 0.0),
        "no_grad_passes": phases.get("score/old", 0.0) + phases.get("score/anchor", 0.0),
        "gradient_pass": phases.get("update/gradient", 0.0), "optimizer": phases.get("update/optimizer", 0.0),
        "completion_tokens": float(tokens), "decode_steps": float(steps),
        "skipped": float("defender/skipped" in stats),
    }


def bare_generate_s_per_step(module: SelfPlayModule, seeds, args, dtype: str) -> float:
    """Seconds per decoding step of a plain ``PeftModel.generate`` (torch's sampler, no abspo code) on the same
    prompts, the defender's adapter on, the same sampling settings and 64 forced new tokens."""
    prompts = [defender_prompt(module.tokenizer, module.game, s.prompt) for s in seeds for _ in range(args.group)]
    enc = module.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with module.bank.role("defender") as model, torch.inference_mode(), autocast(dtype):
        config = sampling_config(model, module.tokenizer, args.new_tokens, temperature=1.0)
        config.min_new_tokens = args.new_tokens
        start = time.perf_counter()
        out = model.generate(**enc, generation_config=config)
        return (time.perf_counter() - start) / (out.shape[1] - enc["input_ids"].shape[1])


# -- TRL ------------------------------------------------------------------------------------------------------


class TrlPhases:
    """Wraps a GRPOTrainer's methods to charge each call's time to a phase (same split as abspo's clock)."""

    def __init__(self, trainer) -> None:
        self.seconds: dict[str, float] = {p: 0.0 for p in PHASES}
        self.completion_tokens = 0
        self.decode_steps = 0
        self._wrap(trainer, "_generate", lambda *a, **k: "rollout", self._count)
        self._wrap(trainer, "_calculate_rewards", lambda *a, **k: "judge")
        self._wrap(trainer, "_get_per_token_logps_and_entropies",
                   lambda *a, **k: "gradient_pass" if torch.is_grad_enabled() else "no_grad_passes")
        self._wrap(trainer.accelerator, "backward", lambda *a, **k: "gradient_pass")

    def _wrap(self, obj, name: str, phase_of, after=None) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            phase = phase_of(*args, **kwargs)
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds[phase] += time.perf_counter() - start
            if after is not None:
                after(out)
            return out

        setattr(obj, name, timed)

    def _count(self, out) -> None:
        completion_ids = out[1]  # (prompt_ids, completion_ids, ...): lists of token ids per completion
        self.completion_tokens += sum(len(c) for c in completion_ids)
        self.decode_steps = max(self.decode_steps, max(len(c) for c in completion_ids))

    def take(self) -> dict[str, float]:
        out = dict(self.seconds, completion_tokens=float(self.completion_tokens), decode_steps=float(self.decode_steps))
        self.seconds = {p: 0.0 for p in PHASES}
        self.completion_tokens = self.decode_steps = 0
        return out


def trl_rewards(module: SelfPlayModule):
    """A TRL reward function that pays the defender exactly as abspo's game does (the same judge and table)."""

    def defender_reward(prompts, completions, seed, harmful, **_):
        exchanges = []
        for text, s, h in zip(completions, seed, harmful):
            e = Exchange(seed=s, seed_harmful=h, revised=False, prompt=s, defender_output=text)
            e.response, e.defender_well_formed = read_defender_turn(module.game, text)
            e.turns["defender"] = ([], [])
            exchanges.append(e)
        module.judge_games(exchanges)
        return [e.rewards.get("defender") for e in exchanges]

    return defender_reward


def run(dtype: str, args, stream) -> dict:
    """TRL's steps, each followed by abspo's step on the same seeds; per-step rows of both."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    module = abspo_module(dtype, args)
    batches = [stream.batch(i).seeds for i in range(args.steps + 1)]
    rows = [{"prompt": defender_prompt(module.tokenizer, module.game, s.prompt), "seed": s.prompt,
             "harmful": s.harmful} for seeds in batches for s in seeds]
    trl_model, _ = load_base(BaseModel(dtype=dtype))  # a second copy of the same weights, for TRL's own LoRA
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="abspo-bench-trl-"), per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=len(batches[0]) * args.group // args.micro_batch, num_generations=args.group,
        max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=0.01, num_iterations=1,
        loss_type="dapo", scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, max_steps=args.steps + 1, use_cpu=True, bf16=dtype == "bfloat16", report_to=[],
        logging_steps=10_000, save_strategy="no", shuffle_dataset=False, seed=0, disable_dropout=True,
        remove_unused_columns=False, log_completions=False, mask_truncated_completions=False,
        gradient_checkpointing=False)  # TRL's default is on; abspo's activation_checkpointing is off by default
    peft = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=trl_model, reward_funcs=trl_rewards(module), args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=module.tokenizer, peft_config=peft)
    phases = TrlPhases(trainer)
    series = {"trl": Series(), "abspo": Series(), "bare_generate": Series()}

    class Interleave(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = measured()
            self.interval = self.start.__enter__()
            self.opt = 0.0

        def on_pre_optimizer_step(self, *_, **__):
            self.opt_start = time.perf_counter()

        def on_optimizer_step(self, *_, **__):
            self.opt += time.perf_counter() - self.opt_start

        def on_step_end(self, _args, state, *__, **___):
            self.start.__exit__(None, None, None)
            step = state.global_step - 1
            m = self.interval
            row = {"step_s": m.seconds, "foreign_cores": m.foreign_cores, "peak_rss_mib": m.peak_rss_mib,
                   **phases.take()}
            row["optimizer"] = self.opt
            abspo_row = abspo_step(module, batches[step], step, dtype)
            bare = bare_generate_s_per_step(module, batches[step], args, dtype)
            if step:  # the first step of each warms up
                series["trl"].add(row)
                series["abspo"].add(abspo_row)
                series["bare_generate"].add({"s_per_decode_step": bare})
            print(f"  {dtype} step {step}: TRL {row['step_s']:.1f} s, abspo {abspo_row['step_s']:.1f} s "
                  f"(foreign load {row['foreign_cores']:.2f} / {abspo_row['foreign_cores']:.2f} cores)", flush=True)

    trainer.add_callback(Interleave())
    trainer.train()
    return {name: s.median() for name, s in series.items()} | {
        "max_foreign_cores": max(series[n].max("foreign_cores") for n in ("trl", "abspo"))}


def summarize(result: dict) -> dict:
    trl, abspo, bare = result["trl"], result["abspo"], result["bare_generate"]
    for row in (trl, abspo):
        row["trained_tokens_per_s"] = row["completion_tokens"] / row["step_s"]
        row["update_s"] = row["no_grad_passes"] + row["gradient_pass"] + row["optimizer"]
        row["update_tokens_per_s"] = row["completion_tokens"] / row["update_s"]
        row["rollout_s_per_decode_step"] = row["rollout"] / max(row["decode_steps"], 1)
    return {
        "trained_tokens_per_s_ratio": abspo["trained_tokens_per_s"] / trl["trained_tokens_per_s"],
        "update_tokens_per_s_ratio": abspo["update_tokens_per_s"] / trl["update_tokens_per_s"],
        "rollout_vs_bare_generate": abspo["rollout_s_per_decode_step"] / bare["s_per_decode_step"],
    }


def print_table(dtype: str, result: dict, ratios: dict, args) -> None:
    trl, abspo = result["trl"], result["abspo"]
    print(f"\n{dtype}: medians of {args.steps} steps (after 1 warm-up), micro-batch {args.micro_batch}, "
          f"{torch.get_num_threads()} threads; other processes kept up to {result['max_foreign_cores']:.2f} cores busy")
    print(f"{'':34}{'TRL':>12}{'abspo':>12}{'abspo/TRL':>12}")
    for key in (*PHASES, "update_s", "step_s", "completion_tokens", "trained_tokens_per_s", "update_tokens_per_s",
                "rollout_s_per_decode_step", "peak_rss_mib", "foreign_cores"):
        a, t = abspo[key], trl[key]
        print(f"{key:34}{t:>12.3f}{a:>12.3f}{a / t if t else float('nan'):>12.2f}")
    print(f"{'bare generate s/decode step':34}{'':>12}{result['bare_generate']['s_per_decode_step']:>12.4f}")
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


# -- memory per mode (one process each) ---------------------------------------------------------------------------


def memory_child(mode: str, args) -> None:
    """Two whole ABS steps (attacker and defender turns and updates) in mode ``mode``; prints the peak RSS of the
    process, or with ``--memory-measure tensors`` the peak of tensor memory from before the model is built."""
    def steps():
        game = GameConfig(max_new_tokens_attacker=args.new_tokens, max_new_tokens_defender=args.new_tokens)
        algorithm = AlgorithmConfig(micro_batch_size=args.micro_batch, activation_checkpointing=args.checkpointing)
        module = SelfPlayModule(base=BaseModel(dtype=args.memory_dtype), game=game, mode=mode, algorithm=algorithm)
        data = SeedDataModule(batch_size=8)
        data.setup()
        for index in range(2):
            module.learn(module.play(data.stream.batch(index).seeds, batch_index=index), index)

    if args.memory_measure == "tensors":
        with tensor_peak() as peak:
            steps()
        print(json.dumps({"mode": mode, "peak_mib": peak.peak_mib}))
    else:
        steps()
        print(json.dumps({"mode": mode, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory(args) -> dict:
    """Per ``model.mode``, with and without activation checkpointing: the peak of tensor memory (one process:
    it is deterministic) and the peak RSS (medians of ``--memory-repeats`` processes). Neither depends on the CPU
    load, so this part may run beside other work."""
    def child(mode: str, checkpointing: bool, measure: str) -> float:
        cmd = [sys.executable, __file__, "--memory-child", mode, "--memory-measure", measure,
               "--micro-batch", str(args.micro_batch), "--new-tokens", str(args.new_tokens),
               "--memory-dtype", args.memory_dtype, *(["--checkpointing"] if checkpointing else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]

    out = {}
    for checkpointing in (False, True):
        row = {}
        for mode in ("bipolicy", "shared_full"):
            row[f"{mode}_tensors"] = child(mode, checkpointing, "tensors")
            row[f"{mode}_rss_runs"] = [child(mode, checkpointing, "rss") for _ in range(args.memory_repeats)]
            row[f"{mode}_rss"] = statistics.median(row[f"{mode}_rss_runs"])
        for measure in ("tensors", "rss"):
            row[f"ratio_{measure}"] = row[f"bipolicy_{measure}"] / row[f"shared_full_{measure}"]
        out["activation_checkpointing" if checkpointing else "plain"] = row
        print(f"\nmemory ({args.memory_dtype}, micro-batch {args.micro_batch}, 2 ABS steps, activation checkpointing "
              f"{'on' if checkpointing else 'off'}): peak tensor memory bipolicy {row['bipolicy_tensors']:.0f} MiB, "
              f"shared_full {row['shared_full_tensors']:.0f} MiB, ratio {row['ratio_tensors']:.2f}; peak RSS "
              f"(median of {args.memory_repeats} processes) {row['bipolicy_rss']:.0f} / {row['shared_full_rss']:.0f} "
              f"MiB, ratio {row['ratio_rss']:.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per system (after one warm-up)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--memory-dtype", default="float32")
    parser.add_argument("--memory-repeats", type=int, default=3)
    parser.add_argument("--memory-only", action="store_true", help="skip the timed comparison")
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default="benchmarks/results/bench_update.json")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--memory-measure", choices=["rss", "tensors"], default="rss", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data = SeedDataModule(batch_size=8)
    data.setup()
    report = {"args": vars(args), "threads": torch.get_num_threads(), "dtypes": {}}
    last = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    if args.memory_only:  # keep the timed figures of the last full run (and its machine)
        report = {**last, "memory_args": vars(args)}
    elif not args.memory and "memory" in last:  # keep the memory figures of the last run that took them
        report.update({"memory": last["memory"], "memory_args": last.get("memory_args", last.get("args")),
                       "memory_machine": last.get("memory_machine", last.get("machine"))})
    for dtype in [] if args.memory_only else args.dtypes:
        result = run(dtype, args, data.stream)
        ratios = summarize(result)
        print_table(dtype, result, ratios, args)
        report["dtypes"][dtype] = {**result, "ratios": ratios}
    if args.memory:
        report["memory"] = memory(args)
    write_report(report, args.json, "memory_machine" if args.memory_only else "machine")


if __name__ == "__main__":
    main()
