"""Check the memory planner against measured peaks on this CPU: one training batch per config, in fresh processes.

    python tools/memory_plan.py                         # tiny and SmolLM2, 1 and 2 processes
    python tools/memory_plan.py --configs configs/tiny.yaml --processes 1

For each (config, process count) it starts the process(es), loads the base and the adapters, plays and
learns one warm-up batch (each process on its share of the seeds, as under DDP), then measures two figures:

- *persistent*: the RSS after the warm-up minus the RSS before the base was loaded (the Python + torch
  runtime, which the planner leaves to ``--runtime-gib``), against the plan's persistent part (the LoRA
  gradients excluded: they are freed after each optimizer step);
- *step*: the peak RSS of a second batch (``VmHWM`` after resetting the mark with ``/proc/self/clear_refs``)
  above the RSS it started from, against the plan's largest phase plus the LoRA gradients.

The plan is ``abspo plan``'s for the same config, with the prompt length set to the longest prompt actually
played. Each cell reads measured / planned MiB and the error (planned / measured - 1).

On a CPU the RSS also holds allocator caches and the base's loading buffers, and the tiny model's figures are
dominated by fixed costs: read the SmolLM2 rows for the planner's accuracy on real shapes.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def worker(config: str, out: str) -> None:
    """One process: measure one batch of ``config`` (run under torch.distributed.run for 2 processes)."""
    import torch

    from abspo.cli import cli_main
    from abspo.distributed import Collective

    if "WORLD_SIZE" in os.environ:
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    collective = Collective.current()
    before_load = _status("VmRSS")
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

    batch(0)  # warm-up: lazy imports, kernels, the AdamW moments
    gc.collect()
    persistent = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS mark starts again from the current RSS
    mine = batch(1)
    prompts = [len(e.turns[r][0]) for e in mine for r in e.turns]
    result = {"rank": collective.rank, "persistent": persistent - before_load, "phase": _status("VmHWM") - persistent,
              "max_prompt": max(prompts, default=0)}
    everyone = collective.gather_objects([result])
    if collective.rank == 0:
        Path(out).write_text(json.dumps(everyone))
    if collective.active:
        torch.distributed.destroy_process_group()


def measure(config: str, processes: int, out: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // processes)))
    me = [str(Path(__file__).resolve()), "--worker", config, str(out)]
    cmd = ([sys.executable, *me] if processes == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *me])
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["configs/tiny.yaml", "configs/smollm2-cpu.yaml"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    from abspo.planner import inputs_from_config, plan_memory

    print(f"{'config':<28}{'procs':>6}  {'persistent MiB (measured / planned, error)':<44}{'step MiB (measured / planned, error)'}")
    for config in args.configs:
        for n in args.processes:
            rows = measure(config, n, Path(f"/tmp/abspo-memory-{os.getpid()}.json"))
            prompt = max(r["max_prompt"] for r in rows)
            plan = plan_memory(inputs_from_config([config], devices=n, runtime_gib=0.0, prompt_tokens=prompt,
                                                  judge_params=0.0))
            grads = plan.persistent["LoRA grads (fp32)"]  # set to None after each optimizer step: part of the step
            cells = []
            for measured, planned in ((max(r["persistent"] for r in rows), plan.persistent_bytes - grads),
                                      (max(r["phase"] for r in rows), plan.phase_bytes(plan.peak_phase) + grads)):
                cells.append(f"{measured / 2**20:8.0f} / {planned / 2**20:6.0f}, {planned / measured - 1:+5.0%}")
            print(f"{config:<28}{n:>6}  {cells[0]:<44}{cells[1]}   (step peak: {plan.peak_phase}, "
                  f"longest prompt {prompt} tokens)")

if __name__ == "__main__":
    main()
