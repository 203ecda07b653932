"""Fingerprint of a short tiny run: the sha256 of its exported adapters and of its logged scalars.

A refactor that claims to change no behaviour must leave this fingerprint unchanged: record it before, run it
after, compare. Timing scalars (``perf/*``) and the diagnostics' overhead differ from run to run and are left
out; every other scalar is hashed at full float precision, so a changed sign, routing or padding shows.

    python tools/fingerprint_run.py                      # configs/tiny.yaml, 4 optimizer steps (2 batches)
    python tools/fingerprint_run.py --steps 8 --json out.json
    python tools/fingerprint_run.py -- --model.mode shared_lora     # anything after -- goes to abspo fit

The run goes to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

NONDETERMINISTIC = ("perf/", "diag/overhead_s")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(run_dir: Path) -> dict:
    from abspo.evaluation.curves import read_scalars

    adapters = {str(p.relative_to(run_dir)): sha256(p) for p in sorted((run_dir / "adapters").rglob("*.safetensors"))}
    scalars = {tag: points for tag, points in sorted(read_scalars(run_dir).items())
               if not tag.startswith(NONDETERMINISTIC)}
    text = json.dumps(scalars, sort_keys=True).encode()
    return {"adapters": adapters, "scalars_sha256": hashlib.sha256(text).hexdigest(), "scalar_tags": len(scalars),
            "scalar_points": sum(len(v) for v in scalars.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=4, help="trainer.max_steps (optimizer steps)")
    parser.add_argument("--json", help="also write the fingerprint here")
    parser.add_argument("fit_args", nargs="*", help="extra `abspo fit` arguments (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "abspo.cli", "fit", "--config", args.config, "--trainer.max_steps", str(args.steps),
               "--run.output_root", tmp, "--run.name", "fingerprint", "--run.export_every_n_steps", str(args.steps), *args.fit_args]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        result = {"config": args.config, "steps": args.steps, "fit_args": args.fit_args, **fingerprint(Path(tmp) / "fingerprint")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
