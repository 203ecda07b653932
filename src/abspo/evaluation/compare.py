"""``abspo compare``: bipolicy against the shared baselines, on the same seeds and game budget, settled by cross-play.

ABS's claim is comparative, so the comparison is one command. For each ``model.mode`` it trains the same
config for the same number of batches of games (``run.max_batches``: a shared mode makes one optimizer step
per batch where bipolicy makes two, so counting steps would give the shared modes twice the games) with
:class:`~abspo.callbacks.CollapseDiagnostics` on; each run is a separate ``abspo fit`` process, so its peak
memory is its own (``ru_maxrss``) and nothing leaks between modes. Then every mode's attacker meets every
mode's defender (plus ``vanilla``, the seeds unchanged, and the untrained ``base`` in both seats) in a
cross-play tournament on held-out harmful prompts (HarmBench by default, never trained on), greedy, judged by
the training config's judge (:mod:`abspo.evaluation.crossplay`).

Writes to ``out``: ``runs/<mode>/`` (each run folder, as ``abspo fit`` writes it, and ``<mode>.log``),
``crossplay/`` (matrix, heatmap, every exchange), ``curves-*.png`` (one line per mode: the game, the pressure,
alignment and diversity diagnostics), ``report.md`` and ``report.json``. A finished run is reused when the command
is repeated with the same settings (``retrain`` forces new ones), so a killed comparison resumes at the first
mode it had not finished.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from abspo.core import run_folder
from abspo.core.atomic import atomic_write
from abspo.weights.adapter_folders import saved_adapter_shapes
from abspo.core.config import stacked_config_files
from abspo.core.errors import ConfigError
from abspo.evaluation.crossplay import CrossplayProtocol, crossplay_command
from abspo.evaluation.curves import plot_runs, read_scalars
from abspo.evaluation.players import is_model_folder
from abspo.weights.modes import MODES

log = logging.getLogger(__name__)

COMPARE_FORMAT = 1
HELD_OUT = CrossplayProtocol(seeds="data/eval/harmbench.jsonl", n_seeds=24)
"""Cross-play on HarmBench behaviours (held out: training seeds are AdvBench and Do-Not-Answer)."""

FINAL_METRICS = ["game/attack_success_rate", "game/benign_refusal_rate", "attacker/reward", "defender/reward",
                 "diag/pressure_vs_base", "diag/pressure_vs_self", "diag/grad_cos_probe", "diag/grad_cos_shared",
                 "diag/role_kl", "diag/attack_self_bleu", "diag/attack_embedding_similarity",
                 "diag/attack_seed_similarity", "retention/anchor/score", "retention/defender/score"]
CURVES = {
    "game": ["game/attack_success_rate", "game/benign_refusal_rate", "attacker/reward", "defender/reward"],
    "pressure": ["diag/pressure_vs_base", "diag/pressure_vs_self"],
    "alignment": ["diag/grad_cos_probe", "diag/grad_cos_shared", "diag/role_kl"],
    "diversity": ["diag/attack_self_bleu", "diag/attack_embedding_similarity", "diag/attack_seed_similarity"],
}


def run_compare(
    out: str,
    train_config: list[str],
    modes: list[str] = list(MODES),
    batches: int = 10,
    diagnostics_every: int = 2,
    protocol: CrossplayProtocol = HELD_OUT,
    fit_args: list[str] = [],  # noqa: B006 - never mutated; a list so that --help shows its type
    retrain: bool = False,
) -> dict[str, Any]:
    """Train every mode on the same config and game budget, then cross-play their attackers and defenders.

    Args:
        out: Output folder (runs, cross-play, curves and the report).
        train_config: The training config(s), as given to ``abspo fit --config`` (later files override earlier).
        modes: The modes to compare (bipolicy, shared_lora, shared_full).
        batches: Batches of games each mode trains on (run.max_batches).
        diagnostics_every: CollapseDiagnostics every N batches.
        protocol: Cross-play seeds (default: 24 HarmBench behaviours, held out), what the judge sees, batch size.
        fit_args: Extra ``abspo fit`` arguments for every run, e.g. ["--data.batch_size", "4"].
        retrain: Train again even where a finished run with the same settings exists.
    """
    if batches < 1 or diagnostics_every < 1:
        raise ConfigError("batches" if batches < 1 else "diagnostics_every", "must be >= 1", "use a positive number")
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ConfigError("modes", f"unknown mode(s) {unknown}" if unknown else "no mode given", f"use some of {list(MODES)}")
    for i, path in enumerate(train_config):
        if not Path(path).is_file():
            raise ConfigError(f"train_config[{i}]", f"config file {path!r} does not exist", "give a training YAML, e.g. configs/smollm2-cpu.yaml")
    protocol.validate()
    out_dir = Path(out)
    runs: dict[str, dict[str, Any]] = {}
    for mode in modes:
        runs[mode] = train_mode(out_dir, mode, train_config, batches, diagnostics_every, fit_args, retrain)
    # The base, judge and game the runs were trained with, fit_args included: each run's resolved config.yaml
    # (they differ in model.mode only).
    resolved = out_dir / "runs" / modes[0] / run_folder.RESOLVED_CONFIG
    model_cfg = yaml.safe_load(resolved.read_text(encoding="utf-8")).get("model") or {}

    attackers = ["vanilla", "base"] + [f"{m}={out_dir / 'runs' / m / 'adapters' / 'attacker'}" for m in modes]
    defenders = ["base"] + [f"{m}={out_dir / 'runs' / m / 'adapters' / 'defender'}" for m in modes]
    argv = ["--out", str(out_dir / "crossplay"), "--attackers", json.dumps(attackers), "--defenders", json.dumps(defenders),
            "--protocol", json.dumps(asdict(protocol))]
    for key in ("base", "judge", "game"):
        if model_cfg.get(key) is not None:
            argv += [f"--{key}", json.dumps(model_cfg[key])]
    log.info("cross-play: %d attackers x %d defenders on %s", len(attackers), len(defenders), protocol.seeds)
    crossplay_command(argv)
    crossplay = json.loads((out_dir / "crossplay" / "crossplay.json").read_text(encoding="utf-8"))

    scalars = {m: read_scalars(out_dir / "runs" / m) for m in modes}
    block = max(diagnostics_every, batches // 5)  # a block holds at least one diagnostics point
    curves = {name: plot_runs(scalars, tags, block, out_dir / f"curves-{name}.png", f"{name} by mode").name
              for name, tags in CURVES.items()}
    report = {"format": COMPARE_FORMAT, "train_config": list(train_config), "batches": batches, "fit_args": list(fit_args),
              "modes": {m: {**runs[m], "final": final_means(scalars[m]), "median_step_s": median_step(scalars[m])}
                        for m in modes},
              "crossplay": {"attack_success_rate": crossplay["attack_success_rate"], "heatmap": crossplay["heatmap"],
                            "protocol": crossplay["protocol"]},
              "curves": curves}
    atomic_write(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out_dir / "report.md", render_report(report, (out_dir / "crossplay" / "matrix.md").read_text(encoding="utf-8")))
    return report


def callbacks_with_diagnostics(configs: list[str], every: int) -> list[dict[str, Any]]:
    """The configs' callbacks with one CollapseDiagnostics every ``every`` batches: the configs' own, set to that
    cadence, or a new one (two would measure the same batches twice and both write diagnostics.json)."""
    trainer = stacked_config_files(configs, "train_config").get("trainer") or {}
    callbacks, found = [], False
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("CollapseDiagnostics"):
            callback = {**callback, "init_args": {**(callback.get("init_args") or {}), "every_n_batches": every}}
            found = True
        callbacks.append(callback)
    if not found:
        callbacks.append({"class_path": "abspo.callbacks.CollapseDiagnostics", "init_args": {"every_n_batches": every}})
    return callbacks


def train_mode(out_dir: Path, mode: str, configs: list[str], batches: int, every: int, fit_args: list[str],
               retrain: bool) -> dict[str, Any]:
    """Run ``abspo fit`` for ``mode`` in its own process (or reuse a finished run with the same settings)."""
    runs = out_dir / "runs"
    record_path = runs / mode / "compare_run.json"
    settings = {"mode": mode, "configs": list(configs), "batches": batches, "diagnostics_every": every,
                "fit_args": list(fit_args)}
    if not retrain and record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("settings") == settings:
            log.info("%s: reusing the finished run in %s", mode, runs / mode)
            return record
    runs.mkdir(parents=True, exist_ok=True)
    callbacks = runs / f"{mode}.callbacks.yaml"  # a config file's list replaces the earlier ones' whole
    atomic_write(callbacks, yaml.safe_dump({"trainer": {"callbacks": callbacks_with_diagnostics(configs, every)}}))
    command = [sys.executable, "-m", "abspo.cli", "fit", *[x for c in [*configs, str(callbacks)] for x in ("--config", c)],
               "--model.mode", mode, "--run.max_batches", str(batches), "--run.output_root", str(runs),
               "--run.name", mode, "--run.overwrite", "true", "--trainer.enable_progress_bar", "false", *fit_args]
    log_path = runs / f"{mode}.log"
    log.info("%s: training %d batches (log: %s)", mode, batches, log_path)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as fh:
        child = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise ConfigError("train_config" if child.returncode == 2 else f"modes ({mode})",
                          f"`abspo fit` for {mode} failed with status {child.returncode}: {tail[0][:400]}",
                          f"see {log_path}")
    record = {"settings": settings, "seconds": seconds, "seconds_per_batch": seconds / batches,
              "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
              "trainable_params": trainable_params(runs / mode / run_folder.ADAPTERS)}
    atomic_write(record_path, json.dumps(record, indent=2) + "\n")
    return record


def trainable_params(adapters: Path) -> int:
    """Trainable parameters of a run, counted from its exports: every distinct adapter (or the full policy) once."""
    from safetensors import safe_open

    seen, total = set(), 0
    for role_dir in sorted(p for p in adapters.iterdir() if p.is_dir()):
        role = json.loads((role_dir / "abspo_role.json").read_text(encoding="utf-8"))
        if role["adapter"] in seen:
            continue
        seen.add(role["adapter"])
        if is_model_folder(role_dir):
            for f in role_dir.glob("*.safetensors"):
                with safe_open(str(f), framework="pt") as fh:
                    total += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
        else:
            total += sum(math.prod(s) for s in saved_adapter_shapes(role_dir, str(role_dir)).values())
    return total


def final_means(scalars: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    """Mean of each metric over the last third of its points (the run's end state, less noisy than one batch)."""
    out = {}
    for tag in FINAL_METRICS:
        values = [v for _, v in scalars.get(tag, [])]
        if values:
            tail = values[-max(1, len(values) // 3):]
            out[tag] = sum(tail) / len(tail)
    return out


def median_step(scalars: dict[str, list[tuple[int, float]]]) -> float | None:
    """Median seconds per batch (``perf/step_s``; the diagnostics' own time is ``diag/overhead_s``)."""
    values = [v for _, v in scalars.get("perf/step_s", [])]
    return statistics.median(values) if values else None


def render_report(report: dict[str, Any], matrix_md: str) -> str:
    modes = list(report["modes"])
    fmt = lambda x, spec=".3f": "–" if x is None else format(x, spec)  # noqa: E731
    lines = [f"# abspo compare: {', '.join(modes)}", "",
             f"Config: {' + '.join(report['train_config'])}; {report['batches']} batches of games per mode"
             + (f"; extra fit arguments {report['fit_args']}" if report["fit_args"] else "") + ".", "",
             "## Cost", "", "| mode | trainable parameters | peak RSS | wall time (with start-up) | median step |",
             "|---|---:|---:|---:|---:|"]
    for m in modes:
        r = report["modes"][m]
        lines.append(f"| {m} | {r['trainable_params'] / 1e6:.2f} M | {r['peak_rss_bytes'] / 2**30:.2f} GiB "
                     f"| {r['seconds'] / 60:.1f} min | {fmt(r['median_step_s'], '.1f')} s |")
    lines += ["", "## End of training (mean over the last third of each run's points)", "",
              "| metric | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for tag in FINAL_METRICS:
        lines.append(f"| {tag} | " + " | ".join(fmt(report["modes"][m]["final"].get(tag)) for m in modes) + " |")
    matrix_md = "\n".join(line for line in matrix_md.strip().splitlines() if not line.startswith("# "))
    lines += ["", "## Cross-play (held-out seeds; row = attacker, column = defender: attack success)", "", matrix_md.strip(), "",
              f"![cross-play]({Path('crossplay') / report['crossplay']['heatmap']})" if report["crossplay"]["heatmap"] else "",
              "", "## Curves", ""]
    lines += [f"![{name}]({path})" for name, path in report["curves"].items()]
    lines += ["", "Reading it: a mode keeps the game adversarial when its attacker still beats the frozen base "
              "(pressure_vs_base) while its own defender resists more (pressure_vs_self falls), the roles' gradients "
              "disagree (cosine below 0) and the attack prompts stay varied (self-BLEU and embedding similarity stay "
              "low). In cross-play, a better defender has a lower column; a stronger attacker a higher row.", ""]
    return "\n".join(lines)
