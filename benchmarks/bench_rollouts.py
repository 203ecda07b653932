"""Rollout decoding: Hugging Face generate with its dynamic KV cache against a static cache, compiled decoding and
continuous batching, on one batch, in one process, calls interleaved.

    python benchmarks/bench_rollouts.py                 # SmolLM2-135M on this CPU (~10 min on 2 cores)
    python benchmarks/bench_rollouts.py --no-compile    # without the inductor compilation (~3 min)
    python benchmarks/bench_rollouts.py --game          # whole games, both roles, the main job's settings (~9 min)

``tools/gpu_check.py`` runs the same comparison (:func:`decoding_figures`) at Qwen2.5-7B shape on a GPU, where
these options are meant to pay off.

The batch: the defender's turns for ``--prompts`` seed prompts (the chat template, system prompt included), at most
``--new-tokens`` new tokens, keyed sampling at temperature 1 (the game's sampler), the defender's adapter on
(perturbed, so that the LoRA path does real work). Every option generates ``--batches`` batches of the seed stream,
one round per batch, the options interleaved within a round (dynamic, static, compiled, continuous) so that load
from other processes hits them alike. The first batch is reported apart (compilation, CUDA graph capture,
continuous batching's warm-up); tokens/s is over the later batches, which have other prompt widths, as a run's
batches do. The CPU cores other processes kept busy meanwhile are printed beside the figures.

* **dynamic, static, static+compile** are abspo's ``model.rollout.hf`` settings (:class:`abspo.rl.rollout.
  DecodingConfig`). Their samples are compared with dynamic's row by row (``same``): a static cache must change no
  token; compiled kernels round differently, which can flip a near-tie.
* **continuous** is transformers' continuous batching (``generate_batch``, paged attention), as a reference only:
  it draws with its own sampler, not the game's keyed one, so its samples are not comparable and it cannot play
  the game's turns (a game's sample would depend on the batch and the process; see abspo.rl.rollout).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import GenerationConfig

from abspo.rl.rollout import DecodingConfig, generate
from abspo.core.timing import measured, synchronize, write_report

COMPILE_MODE = "reduce-overhead"
"""Transformers' default: CUDA graphs on a GPU; on a CPU inductor skips the graphs and this is its default mode."""


def variants(compile_mode: str | None = COMPILE_MODE) -> dict[str, DecodingConfig]:
    """abspo's decoding settings, from plain to fastest (``compile_mode`` None: without compilation)."""
    out = {"dynamic": DecodingConfig(), "static": DecodingConfig(cache="static")}
    if compile_mode:
        out["static+compile"] = DecodingConfig(cache="static", compile=True, compile_mode=compile_mode)
    return out


def _continuous(model, tokenizer, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """transformers' continuous batching on the same prompts and sampling temperature (its own sampler)."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out = model.get_base_model().generate_batch(ids, generation_config=config, progress_bar=False)
    return [list(out[k].generated_tokens) for k in sorted(out, key=lambda k: int(k.rsplit("_", 1)[-1]))]


def decoding_figures(bank, tokenizer, batches: list[list[str]], new_tokens: int,
                     decodings: dict[str, DecodingConfig] | None = None, continuous: bool = True,
                     role: str = "defender", progress: bool = False) -> dict[str, dict]:
    """Every option generates ``batches[0]`` (the first call: compilation, graph capture, warm-up), then each
    later batch in turn, the options interleaved within a round. Different batches have different prompt widths, as
    a run's batches do, so a recompilation or a new cache that a width causes is in the figures.

    Per option: ``first_s``; ``median_s``, ``tokens`` and ``tokens_per_s`` over the later batches; ``ratio``
    (tokens/s over dynamic's); ``same`` (share of rows sampled exactly as dynamic sampled them, over the later
    batches; None for continuous batching); ``foreign_cores`` (the most any timed call saw); ``peak_gib`` (GPU).
    An option that fails gets ``error`` instead: a GPU check must still report the others. ``progress``: print
    each call's time as it ends (a run cut short still shows what it measured)."""
    decodings = decodings if decodings is not None else variants()
    names = [*decodings, *(["continuous"] if continuous else [])]
    calls: dict[str, list] = {n: [] for n in names}
    errors: dict[str, str] = {}
    on_gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    for index, prompts in enumerate(batches):
        keys = list(range(1, len(prompts) + 1))
        for name in names:
            if name in errors:
                continue
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            try:
                with bank.role(role) as model, torch.inference_mode(), measured() as interval:
                    if name == "continuous":
                        completions = _continuous(model, tokenizer, prompts, new_tokens)
                    else:
                        completions = generate(model, tokenizer, prompts, new_tokens, 1.0, keys=keys,
                                               decoding=decodings[name]).completion_ids
                    synchronize()
            except Exception as err:  # noqa: BLE001  (reported as the option's figure)
                errors[name] = f"{type(err).__name__}: {err}"[:300]
                if progress:
                    print(f"  {name}: failed: {errors[name]}", flush=True)
                continue
            if progress:
                print(f"  {name}, batch {index}: {interval.seconds:.2f} s, "
                      f"{sum(len(c) for c in completions)} tokens", flush=True)
            peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
            calls[name].append((interval.seconds, sum(len(c) for c in completions), interval.foreign_cores, peak,
                                completions))
    out: dict[str, dict] = {}
    for name in names:
        if name in errors:
            out[name] = {"error": errors[name]}
            continue
        timed = calls[name][1:] or calls[name]
        seconds, tokens = sum(c[0] for c in timed), sum(c[1] for c in timed)
        same = None
        if name != "continuous" and "dynamic" in calls:
            pairs = [(a, b) for mine, ref in zip(timed, calls["dynamic"][1:] or calls["dynamic"])
                     for a, b in zip(mine[4], ref[4])]
            same = sum(a == b for a, b in pairs) / len(pairs)
        out[name] = {"first_s": calls[name][0][0], "median_s": statistics.median(c[0] for c in timed),
                     "tokens": tokens, "tokens_per_s": tokens / seconds, "same": same,
                     "foreign_cores": max(c[2] for c in calls[name]), "peak_gib": max(c[3] for c in timed)}
    base = out.get("dynamic", {}).get("tokens_per_s")
    for row in out.values():
        if base and "tokens_per_s" in row:
            row["ratio"] = row["tokens_per_s"] / base
    return out


def game_figures(module, seed_batches: list, decodings: dict[str, DecodingConfig]) -> dict[str, dict]:
    """Whole games (``--game``): each option plays every batch of seeds through the module's own ``play`` (attacker
    turns, then defender turns, as in training: one model, so a static cache is sized for the longest turn either
    role has needed), options interleaved per batch. Per option: rollout seconds per batch (both roles, the judge
    excluded; median over the batches after the first), the first batch apart, and ``same``: the share of games
    whose attacker and defender turns equal dynamic's."""
    calls: dict[str, list] = {n: [] for n in decodings}
    for index, seeds in enumerate(seed_batches):
        for name, decoding in decodings.items():
            module.rollout_cfg.hf = decoding
            module.clock.take()
            with measured() as interval:
                games = module.play(seeds, batch_index=index)
            phases = module.clock.take()
            seconds = phases.get("rollout/attacker", 0.0) + phases.get("rollout/defender", 0.0)
            turns = [(g.attacker_output, g.defender_output) for g in games]
            calls[name].append((seconds, interval.foreign_cores, turns))
    reference = calls["dynamic"][1:] or calls["dynamic"]
    out = {}
    for name, rows in calls.items():
        timed = rows[1:] or rows
        pairs = [(a, b) for mine, ref in zip(timed, reference) for a, b in zip(mine[2], ref[2])]
        median = statistics.median(r[0] for r in timed)
        out[name] = {"first_s": rows[0][0], "median_s": median, "same": sum(a == b for a, b in pairs) / len(pairs),
                     "foreign_cores": max(r[1] for r in rows),
                     "ratio": statistics.median(r[0] for r in reference) / median}
    return out


def print_figures(title: str, figures: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(f"{'variant':<16} {'first s':>8} {'median s':>9} {'tokens/s':>9} {'ratio':>6} {'same':>5} {'foreign':>8}")
    for name, row in figures.items():
        if "error" in row:
            print(f"{name:<16} failed: {row['error']}")
            continue
        same = "-" if row["same"] is None else f"{row['same']:.2f}"
        print(f"{name:<16} {row['first_s']:8.2f} {row['median_s']:9.2f} {row['tokens_per_s']:9.1f} "
              f"{row.get('ratio', float('nan')):6.2f} {same:>5} {row['foreign_cores']:8.2f}", flush=True)


def perturb_adapters(params) -> None:
    """Trained-looking adapters: LoRA B != 0, so the LoRA path changes the samples (B starts at 0)."""
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.02)


def main_job_module(args):
    """A module with configs/smollm2-cpu.yaml's game, adapters and judge (recomputed old log-probs, which compiled
    decoding needs), its adapters perturbed as after some training."""
    from abspo.weights.bank import BankSpec, LoraSpec
    from abspo.game.rules import GameConfig
    from abspo.judges import HeuristicJudge
    from abspo.weights.models import BaseModel
    from abspo.training.module import SelfPlayModule

    game = GameConfig(unrevised_fraction=0.5, attacker_format="plain", temperature=0.7,
                      max_new_tokens_attacker=args.new_tokens, max_new_tokens_defender=args.new_tokens)
    bank = BankSpec(adapters={r: LoraSpec(r=8, alpha=16) for r in ("attacker", "defender")})
    module = SelfPlayModule(base=BaseModel(name_or_path=args.model, dtype=args.dtype), bank=bank, game=game,
                            judge=HeuristicJudge())
    perturb_adapters(module.bank.adapter_state_dict().values())
    return module


def main(argv: list[str] | None = None) -> dict:
    from abspo.weights.bank import AdapterBank, BankSpec
    from abspo.game.seeds import SeedDataModule
    from abspo.game.rules import GameConfig, defender_prompt
    from abspo.weights.models import BaseModel, load_base

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model.base.name_or_path")
    parser.add_argument("--dtype", default="float32", help="the main job's (configs/smollm2-cpu.yaml)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="batches per option: the first (warm-up), then "
                        "the timed ones")
    parser.add_argument("--compile-mode", default=COMPILE_MODE)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-continuous", action="store_true")
    parser.add_argument("--game", action="store_true", help="whole games through SelfPlayModule.play with the main "
                        "job's game settings (both roles), instead of one role's turns")
    parser.add_argument("--reverse", action="store_true", help="run the options in reverse order within each round "
                        "(dynamic last), to see whether the order biases the figures")
    parser.add_argument("--json", default="benchmarks/results/bench_rollouts.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = SeedDataModule(batch_size=args.prompts)
    data.setup()
    options = variants(None if args.no_compile else args.compile_mode)
    if args.reverse:
        options = dict(reversed(options.items()))
    if args.game:
        seed_batches = [data.stream.batch(i).seeds for i in range(args.batches)]
        figures = game_figures(main_job_module(args), seed_batches, options)
        print(f"\nwhole games, the main job's settings ({args.prompts} seeds a batch), {args.batches - 1} batches after "
              "the first: rollout s per batch (both roles)")
        for name, row in figures.items():
            print(f"{name:<16} first {row['first_s']:6.2f}  median {row['median_s']:6.2f}  dynamic/this "
                  f"{row['ratio']:5.2f}  same {row['same']:.2f}  foreign {row['foreign_cores']:.2f}", flush=True)
    else:
        base, tokenizer = load_base(BaseModel(name_or_path=args.model, dtype=args.dtype))
        bank = AdapterBank(base, BankSpec())
        perturb_adapters(bank.role_parameters("defender"))
        batches = [[defender_prompt(tokenizer, GameConfig(), s.prompt) for s in data.stream.batch(i).seeds]
                   for i in range(args.batches)]
        figures = decoding_figures(bank, tokenizer, batches, args.new_tokens, options, not args.no_continuous)
        print_figures(f"{args.model} ({args.dtype}), {args.prompts} prompts x {args.new_tokens} new tokens per batch, "
                      f"{torch.get_num_threads()} threads, {args.batches - 1} batches after the first", figures)
    report = {"args": vars(args), "threads": torch.get_num_threads(), "figures": figures}
    write_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
