"""Check the memory planner against measured peaks on this CPU: one training batch per config, in fresh processes.

    python tools/memory_plan.py                         # tiny and SmolLM2, 1 and 2 processes
    python tools/memory_plan.py --configs configs/tiny.yaml --processes 1

For each (config, process count) it starts the process(es), loads the base and the adapters, resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``: the loading peak, with the weights read twice, is not the
run's), then plays and learns two batches (each process on its share of the seeds, as under DDP). *peak* is
the highest RSS reached (``VmHWM``) minus the RSS before the base was loaded (the Python + torch runtime,
which the planner leaves to ``--runtime-gib``); *loaded* is the same difference right after loading. *planned*
is ``abspo plan``'s peak for the same config (runtime 0, the prompt length set to the longest prompt actually
played); error = planned / peak - 1. With ``--measure tensors``, *tensors* replaces *peak*: the peak of tensor
memory over the same two batches, i.e. what the loaded tensors held plus the peak of what the batches allocated
(:func:`abspo.core.timing.tensor_peak`: what the planner counts, without the runtime and the C heap's slack; the
loading transient is not the run's either). It runs under the profiler, whose records make the RSS meaningless,
hence one measure per run.

The RSS is an upper bound of the live tensors: the C allocator keeps freed memory, the base's weight file
stays memory-mapped, and the loaded process holds more than the model (tokenizer, judge, callbacks), which
weighs most on the tiny model.

On a CPU the RSS also holds allocator caches and the base's loading buffers, and the tiny model's figures are
dominated by fixed costs: read the SmolLM2 rows for the planner's accuracy on real shapes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(config: str, out: str, measure: str) -> None:
    """One process: measure one batch of ``config`` (run under torch.distributed.run for 2 processes)."""
    import torch

    from abspo.cli import cli_main
    from abspo.weights.distributed import Collective
    from abspo.core.timing import peak_rss_reset, proc_status_bytes, tensor_peak

    if "WORLD_SIZE" in os.environ:
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    collective = Collective.current()
    before_load = proc_status_bytes("VmRSS")
    tensors = measure == "tensors"
    with tensor_peak(enabled=tensors) as load:
        cli = cli_main(["--config", config, "--trainer.devices", "1", "--trainer.strategy", "auto"], run=False)
        module, data = cli.model, cli.datamodule
        data.setup()
    seeds = data.stream.batch(0).seeds
    share = range(len(seeds))[collective.shard(len(seeds))]

    def batch(index: int) -> list:
        planned = module.plan(data.stream.batch(index).seeds)
        mine = module.play_games([e for e in planned if e.group in share], index)
        module.learn(mine, index)
        return mine

    peak_rss_reset()  # forget the loading peak (weights read twice, memory maps)
    loaded = proc_status_bytes("VmRSS")
    with tensor_peak(enabled=tensors) as run:
        batch(0)  # the first batch also creates the AdamW moments
        mine = batch(1)
    prompts = [len(e.turns[r][0]) for e in mine for r in e.turns]
    result = {"rank": collective.rank, "loaded": loaded - before_load, "peak": proc_status_bytes("VmHWM") - before_load,
              "tensors": (load.held_mib + run.peak_mib) * 2**20 if tensors else None,
              "max_prompt": max(prompts, default=0)}
    everyone = collective.gather_objects([result])
    if collective.rank == 0:
        Path(out).write_text(json.dumps(everyone))
    if collective.active:
        torch.distributed.destroy_process_group()


def measure(config: str, processes: int, out: Path, what: str) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // processes)))
    me = [str(Path(__file__).resolve()), "--worker", config, str(out), what]
    cmd = ([sys.executable, *me] if processes == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *me])
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["configs/tiny.yaml", "configs/smollm2-cpu.yaml"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--measure", choices=["rss", "tensors"], default="rss",
                        help="peak RSS (the default), or the peak of tensor memory (under the profiler, which holds "
                             "every op's record: its RSS is no figure then)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    from abspo.training.planner import inputs_from_config, plan_memory

    measured = "peak MiB" if args.measure == "rss" else "tensors MiB"
    print(f"{'config':<28}{'procs':>6}{'loaded MiB':>12}{measured:>13}{'planned MiB':>13}{'error':>8}")
    for config in args.configs:
        for n in args.processes:
            rows = measure(config, n, Path(f"/tmp/abspo-memory-{os.getpid()}.json"), args.measure)
            prompt = max(r["max_prompt"] for r in rows)
            plan = plan_memory(inputs_from_config([config], devices=n, runtime_gib=0.0, prompt_tokens=prompt,
                                                  judge_params=0.0))
            loaded = max(r["loaded"] for r in rows) / 2**20
            peak = max(r["peak" if args.measure == "rss" else "tensors"] for r in rows) / 2**20
            planned = plan.peak_bytes / 2**20
            print(f"{config:<28}{n:>6}{loaded:>12.0f}{peak:>13.0f}{planned:>13.0f}{planned / peak - 1:>+8.0%}"
                  f"   (planned: {plan.persistent_bytes / 2**20:.0f} persistent + {plan.peak_phase} "
                  f"{plan.phase_bytes(plan.peak_phase) / 2**20:.0f}; longest prompt {prompt} tokens)")


if __name__ == "__main__":
    main()
