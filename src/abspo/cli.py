"""The ``abspo`` command: ``fit`` and ``test`` through LightningCLI, ``crossplay`` and ``safety-report`` beside it.

Every run lives in one stable folder, ``<run.output_root>/<run.name>/`` (the name defaults to the config
file's stem), so that re-running the same command with ``--ckpt_path last`` resumes it:

* ``checkpoints/last.ckpt`` (+ periodic ones): adapters, optimizer/scheduler states, loop and data position
* ``tb/``: TensorBoard logs (``tensorboard --logdir checkpoints``)
* ``adapters/<role>/``: each role as a PEFT folder
* ``tb/config.yaml``: the full resolved config

``abspo crossplay`` and ``abspo safety-report`` evaluate adapter folders from any run, so they take no training
config: each is a function (:func:`~abspo.evaluation.crossplay.run_crossplay`,
:func:`~abspo.evaluation.safety.run_safety_report`) whose signature and docstring are its options and ``--help``
(:func:`~abspo.core.command_line.run_function_command`, one parser for both).

This module parses, dispatches and prints: what a command computes lives in the package below it
(``tools/import_layers.py`` checks that nothing imports it back).

User mistakes (:class:`~abspo.core.errors.ConfigError`) print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from abspo.training import preemption

from abspo.core import run_folder
from abspo.callbacks.checkpoint import RunCheckpoint
from abspo.callbacks.export import AdapterExport
from abspo.callbacks.safety_table import SafetyTable
from abspo.callbacks.progress import ProgressLines, progress_callback
from abspo.training.checkpoint_io import SHARDED_KEY, AtomicCheckpointIO, last_checkpoint, read_training_checkpoint
from abspo.core.command_line import prepare_command_line, progress_lines, run_function_command
from abspo.game.seeds import SeedDataModule
from abspo.core.errors import ConfigError, TrainingStopped, check_output_folder, did_you_mean, one_line_errors
from abspo.evaluation.compare import run_compare
from abspo.evaluation.crossplay import crossplay_command
from abspo.evaluation.before_after import TableProtocol
from abspo.evaluation.tasks import TaskSpec
from abspo.evaluation.players import default_label, parse_player
from abspo.evaluation.safety import (
    SafetyData,
    SafetyProtocol,
    build_items,
    model_safety_report,
    render_markdown,
    report_scalars,
    run_safety_report,
)
from abspo.training.module import SelfPlayModule
from abspo.core.parse_errors import check_config_files, config_error
from abspo.training.planner import plan_main
from abspo.training.sft import run_sft


@dataclass
class RunConfig:
    """Where a run writes, and how often."""

    name: str | None = None
    """Run name; default: the config file's name without extension (or 'abspo')."""
    output_root: str = "checkpoints"
    """Folder that holds one sub-folder per run; trainer.default_root_dir is set to <output_root>/<name>."""
    checkpoint_every_n_steps: int = 20
    """Write checkpoints/last.ckpt every N optimizer steps (and at the end)."""
    export_every_n_steps: int = 0
    """Export adapters/<role>/ every N optimizer steps (0: only at the end)."""
    max_batches: int | None = None
    """Stop after this many batches of games, whatever model.mode (sets trainer.max_steps to the optimizer steps
    they make: two per batch for bipolicy in alternate mode, one for a shared mode). None: trainer.max_steps."""
    progress_every_n_batches: int = 1
    """When the output is not a terminal (a cluster job's log file), print a plain progress line every N batches
    (the step, both rewards, the game rates, seconds per batch) instead of a progress bar."""
    safety_table: bool = False
    """End the run with the before/after safety table (base, warm start, trained defender on held-out prompts:
    abspo.callbacks.SafetyTable), measured as the `table` section says, written to <run dir>/safety_table/."""
    overwrite: bool = False
    """Start a new run in a folder that already holds a checkpoint, replacing that run: its checkpoints, curves,
    exports and reports are removed first. Off: such a run stops with an error, so an earlier run is never
    overwritten by accident."""

    def validate(self) -> None:
        for key, least in (("checkpoint_every_n_steps", 1), ("export_every_n_steps", 0),
                           ("progress_every_n_batches", 1), ("max_batches", 1)):
            value = getattr(self, key)
            if value is not None and value < least:
                raise ConfigError(f"run.{key}", f"must be >= {least}, got {value}", f"give a whole number >= {least}")


def table_protocol(section) -> TableProtocol:
    """The ``table`` section as a TableProtocol, checked (its keys named ``table.*``)."""
    fields = vars(section).copy()
    if fields.get("retention") is not None and not isinstance(fields["retention"], TaskSpec):
        fields["retention"] = TaskSpec(**vars(fields["retention"]))
    protocol = TableProtocol(**fields)
    protocol.validate("table")
    return protocol


TRAINER_FIXES = {
    "strategy": "use auto, ddp, or {class_path: abspo.strategies.FSDP2Strategy} (docs/strategies.md says which when)",
    "accelerator": "use cpu, or cuda on a machine with an NVIDIA GPU (auto picks what the machine has)",
    "devices": "give the number of processes per node as a whole number >= 1, or auto",
    "num_nodes": "give the number of nodes as a whole number >= 1",
    "precision": "use 32-true, bf16-true or bf16-mixed (docs/performance.md)",
}
"""The Trainer arguments whose values Lightning checks when it builds the trainer, and how to mend each."""


def trainer_error(err: Exception) -> Exception:
    """Lightning refuses a bad ``trainer.*`` value with a ValueError, TypeError or MisconfigurationException that
    names the argument: one ConfigError line for that key instead of a traceback. An error naming no Trainer
    argument is not a user's value and is returned as it is (so a bug still shows its traceback)."""
    from lightning.pytorch.strategies import StrategyRegistry

    text = " ".join(str(err).split()).rstrip(".!")
    if "gpu backend" in text.lower():
        return ConfigError("trainer.accelerator", text, TRAINER_FIXES["accelerator"])
    named = sorted((text.find(key), key) for key in TRAINER_FIXES if key in text)
    if not named:
        return err
    key = named[0][1]
    given = re.search(r"strategy='([^']*)'", text) if key == "strategy" else None
    hint = did_you_mean(given.group(1), StrategyRegistry.available_strategies()) if given else ""
    return ConfigError(f"trainer.{key}", text, hint + TRAINER_FIXES[key])


def strategy_from_class_path(path: str):
    """``--trainer.strategy abspo.strategies.FSDP2Strategy``: the strategy class a dotted path names, with its
    defaults (Lightning takes a registered name or an instance, never a class path given as a string)."""
    from lightning.pytorch.strategies import Strategy, StrategyRegistry

    module_name, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        found = None
    if not (isinstance(found, type) and issubclass(found, Strategy)):
        raise ConfigError("trainer.strategy", f"{path!r} names no Lightning Strategy class",
                          f"{did_you_mean(path, StrategyRegistry.available_strategies())}"
                          f"{TRAINER_FIXES['strategy']}")
    return found()


class AbspoCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunConfig, "run")
        parser.add_class_arguments(SafetyProtocol, "eval")
        parser.add_class_arguments(SafetyData, "eval_data")
        parser.add_class_arguments(TableProtocol, "table")

    def run_dir(self) -> Path:
        cfg = self._get(self.config, "run")
        name = cfg.name
        if not name:
            configs = self._get(self.config, "config") or []
            name = Path(str(configs[-1])).stem if configs else "abspo"
        return Path(cfg.output_root) / name

    def _instantiate_trainer(self, config, callbacks):
        run = self._get(self.config, "run")
        RunConfig(**vars(run)).validate()
        run_dir = self.run_dir()
        asked = config.get("default_root_dir")
        if asked is not None and Path(str(asked)).resolve() != run_dir.resolve():
            raise ConfigError("trainer.default_root_dir", f"abspo writes each run to <run.output_root>/<run.name> "
                              f"({run_dir}), and would not honour {str(asked)!r}",
                              f"use --run.output_root {asked} (and --run.name to name the run's folder in it)")
        config["default_root_dir"] = str(run_dir)
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(save_dir=str(run_dir), name=run_folder.TENSORBOARD, version="")
        user_callbacks = list(config.get("callbacks") or [])
        checkpoints = [c for c in user_callbacks + callbacks if isinstance(c, ModelCheckpoint)]
        for c in checkpoints:
            if c.dirpath is None:
                c.dirpath = str(run_dir / run_folder.CHECKPOINTS)
        if not checkpoints:
            callbacks.append(RunCheckpoint(dirpath=str(run_dir / run_folder.CHECKPOINTS), save_last=True, save_top_k=0,
                                           every_n_train_steps=run.checkpoint_every_n_steps))
        if not any(isinstance(c, AdapterExport) for c in user_callbacks + callbacks):
            callbacks.append(AdapterExport(every_n_steps=run.export_every_n_steps))
        if run.safety_table and not any(isinstance(c, SafetyTable) for c in user_callbacks + callbacks):
            callbacks.append(SafetyTable(table_protocol(self._get(self.config, "table"))))
        if config.get("enable_progress_bar") is not False and not any(
                isinstance(c, (ProgressBar, ProgressLines)) for c in user_callbacks + callbacks):
            callbacks.append(progress_callback(run.progress_every_n_batches))
            if isinstance(callbacks[-1], ProgressLines):
                config["enable_progress_bar"] = False  # a bar in a log file is noise; the lines replace it
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]  # a kill mid-save keeps last.ckpt whole
        if isinstance(config.get("strategy"), str) and "." in config["strategy"]:
            config["strategy"] = strategy_from_class_path(config["strategy"])
        try:
            return super()._instantiate_trainer(config, callbacks)
        except (ValueError, TypeError, MisconfigurationException) as err:
            raise trainer_error(err) from None

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``test`` only: Lightning's ``validate``/``predict`` loops have nothing to run in a game."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "test")}

    def parse_arguments(self, parser, args) -> None:
        """Parse; a bad key or value is one ConfigError line (file:line, the key, the closest valid key), not
        jsonargparse's usage wall (:mod:`abspo.core.parse_errors`)."""
        from jsonargparse import ArgumentError

        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = sys.argv[1:] if args is None else [str(a) for a in args]
            sub = getattr(parser, "_subcommands_action", None)
            parsers = [parser, *(sub._name_parser_map.values() if sub is not None else [])]
            known = [o for p in parsers for o in p._option_string_actions if o.startswith("--")]
            raise config_error(str(err), argv, known) from None

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:
            restore = self.__dict__.pop("_restore_signals", None)
            if restore is not None:
                restore()

    def before_fit(self) -> None:
        """Check the strategy, the seeds and a resume checkpoint before anything is written: a bad run changes nothing
        on disk."""
        self.model.check_trainer(self.trainer)
        self.datamodule.setup("fit")
        max_batches = self._get(self.config, "run").max_batches
        if max_batches is not None:
            self.trainer.fit_loop.epoch_loop.max_steps = math.ceil(max_batches * self.model.optimizer_steps_per_batch)
        check_output_folder(self.run_dir(), "run.output_root")
        self._restore_signals = preemption.install(self.trainer)  # SIGTERM / Ctrl-C: finish the batch, save, exit
        ckpt = self._get(self.config, "ckpt_path")
        if ckpt is None:
            existing = self.run_dir() / run_folder.CHECKPOINTS / "last.ckpt"
            if existing.exists() and not self._get(self.config, "run").overwrite:
                raise ConfigError("run.name", f"run folder {self.run_dir()} already holds a checkpoint",
                                  "resume it with --ckpt_path last, pick another --run.name, "
                                  "or pass --run.overwrite true to replace it")
            if existing.exists():
                remove_run_outputs(self.run_dir())
            return
        checkpoint = self._take_checkpoint(ckpt)
        from abspo.strategies import FSDP2Strategy

        if checkpoint.get(SHARDED_KEY) and not isinstance(self.trainer.strategy, FSDP2Strategy):
            raise ConfigError("--ckpt_path", "the checkpoint is a sharded (FSDP2) folder, and this run's strategy is "
                              f"{type(self.trainer.strategy).__name__}", "resume it with trainer.strategy: "
                              "{class_path: abspo.strategies.FSDP2Strategy} on any number of processes "
                              "(--trainer.devices 1 included)")
        self.model.check_checkpoint(checkpoint)
        self.model.check_resume(checkpoint)

    def after_fit(self) -> None:
        if self.model.stop_reason is not None:  # a guard stopped the run; last.ckpt was written at its end
            raise TrainingStopped(self.model.stop_reason)
        for callback in self.trainer.callbacks:
            # A finished run started again trains nothing and Lightning calls no on_train_end: the table still ends
            # the command (read back from the run folder when it was written at this step).
            if isinstance(callback, SafetyTable) and callback.text is None:
                callback.on_train_end(self.trainer, self.model)

    def _parse_ckpt_path(self) -> None:
        """Read a --ckpt_path checkpoint file once, early, with one clear line on failure; take no hyperparameters.

        Lightning's version reads ``hyper_parameters`` out of the checkpoint into the config. abspo
        checkpoints hold none (the YAML is the whole config), and Lightning's reader turns a damaged file
        into a traceback. This runs before the models load, so a bad file fails at once; the checkpoint it
        read is kept for :meth:`_take_checkpoint` (at Qwen scale it is gigabytes: read it once, not twice).
        """
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and str(ckpt) != "last" and Path(str(ckpt)).is_file():  # `last` needs the run folder: read later
            self._checkpoint = self._read_checkpoint(ckpt)

    def _take_checkpoint(self, ckpt) -> dict:
        """The checkpoint :meth:`_parse_ckpt_path` read (released here), else read now."""
        checkpoint = self.__dict__.pop("_checkpoint", None)
        return checkpoint if checkpoint is not None else self._read_checkpoint(ckpt)

    def _read_checkpoint(self, ckpt) -> dict:
        return read_training_checkpoint(last_checkpoint(self.run_dir()) if str(ckpt) == "last" else Path(str(ckpt)))

    def test(self, model: SelfPlayModule, datamodule=None, ckpt_path=None, **_) -> dict:
        """`abspo test`: the safety report of the run's defender.

        ``--ckpt_path`` picks the defender: a checkpoint (``last`` or a ``.ckpt`` file), a PEFT adapter folder
        (``checkpoints/<run>/adapters/defender``, or the ``adapters`` folder above it), or nothing for the
        untrained base. Writes ``<run dir>/eval/<step-N | adapter-<run>-<role> | base>/report.{json,md}`` and
        ``exchanges.{jsonl,html}``, and logs every rate to TensorBoard under ``eval/``.
        """
        check_output_folder(self.run_dir(), "run.output_root")  # the report goes there, after the generation
        protocol, data = self._get(self.config, "eval"), self._get(self.config, "eval_data")
        protocol, data = SafetyProtocol(**vars(protocol)), SafetyData(**vars(data))
        try:
            protocol.validate()
            items = build_items(data, protocol)  # data errors before any generation
        except ConfigError as err:  # the engine names its settings protocol.*; here they are --eval.*
            raise ConfigError(err.key.replace("protocol.", "eval.", 1).replace("data.", "eval_data.", 1),
                              err.problem, err.fix) from None
        label, step, source = self._load_defender(model, ckpt_path)
        progress_lines()
        out = self.run_dir() / run_folder.EVAL / label
        report = model_safety_report(functools.partial(model.bank.role, "defender"), model.tokenizer, model.game,
                                     model.judge, out, protocol, data, items, {"label": label, **source}, model.base_cfg)
        if step is not None:  # the run's own timeline: its base, or one of its checkpoints
            scalars = report_scalars(report)
            for logger in self.trainer.loggers:
                logger.log_metrics(scalars, step=step)
                logger.save()
        print(render_markdown(report))
        print(f"safety report written to {out}/report.md")
        return report

    def _load_defender(self, model: SelfPlayModule, ckpt_path) -> tuple[str, int | None, dict[str, Any]]:
        """Put the defender to evaluate into ``model``.

        Returns (report label, TensorBoard step or None, provenance). The step is the batch index of the
        checkpoint's last batch (the x-axis of every training scalar), 0 for the base; an adapter folder
        from elsewhere gets None: it is not a point of this run's curves, and its report files say it all.
        """
        if ckpt_path is None:
            return "base", 0, {"checkpoint": None}
        folder = Path(str(ckpt_path))
        if str(ckpt_path) != "last" and folder.is_dir():
            if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file() \
                    and (folder / "defender").is_dir():
                folder = folder / "defender"  # the run's adapters/ folder
            spec = parse_player(str(folder.resolve()), "--ckpt_path", "defender")  # a path, never a keyword
            if (spec.kind == "full") != (model.mode == "shared_full"):
                held = "a whole model (a shared_full export)" if spec.kind == "full" else "a LoRA adapter"
                raise ConfigError("--ckpt_path", f"{spec.path} holds {held}, and this config's model.mode is {model.mode}",
                                  "set --model.mode " + ("shared_full" if spec.kind == "full" else "bipolicy")
                                  + " (the mode the folder was trained in)")
            model.bank.load("defender", spec.path, key="--ckpt_path")
            name = default_label(spec.path) if spec.path.parent.name == run_folder.ADAPTERS else f"{spec.path.parent.name}/{spec.path.name}"
            return "adapter-" + name.replace("/", "-"), None, {"adapter": str(spec.path)}
        checkpoint = self._take_checkpoint(ckpt_path)
        model.check_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"], strict=False)
        step = int(checkpoint["global_step"])
        batches = checkpoint.get("SeedDataModule", {}).get("batches_served", 0)
        return f"step-{step}", max(0, batches - 1), {"checkpoint": str(ckpt_path)}


DESCRIPTION = """Anchored Bipolicy Self-Play: an attacker and a defender LoRA on one frozen base.

  abspo fit --config configs/<x>.yaml          train (resume: --ckpt_path last)
  abspo test --config configs/<x>.yaml         safety report of the run's defender (--ckpt_path last | adapter folder)
  abspo crossplay --out DIR --attackers [...] --defenders [...]
                                               attack-success matrix of every attacker against every defender
  abspo safety-report --out DIR --defender F   safety report of any adapter folder on any base, no training config
  abspo compare --out DIR --train_config F     train bipolicy, shared_lora and shared_full alike, cross-play them
  abspo plan --config F                        memory per device of a run, before starting it
  abspo sft --out DIR                          warm-start the defender's adapter on XSTest refusals and answers

Each subcommand has its own --help."""


def remove_run_outputs(run_dir: Path) -> None:
    """``--run.overwrite true``: remove an earlier run's outputs, so that ``last`` names the new run's checkpoint
    everywhere and its curves start clean (Lightning would write ``last-v1.ckpt`` beside the old ``last.ckpt``
    and add event files to the old ones). Only the entries a run writes: the folder may hold anything else.
    Rank 0 alone removes them, before any process group exists and so before anything is written."""
    import shutil

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        for name in run_folder.RUN_OUTPUTS:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


def cli_main(args: list[str] | None = None, run: bool = True) -> AbspoCLI:
    prepare_command_line()
    return AbspoCLI(
        SelfPlayModule,
        SeedDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_defaults={"max_steps": 10, "enable_model_summary": False},
        parser_kwargs={"default_env": False, "prog": "abspo", "description": DESCRIPTION,
                       "formatter_class": _RawDescriptionHelp, "exit_on_error": False,  # errors: parse_arguments
                       "fit": {"exit_on_error": False},
                       "test": {"description": AbspoCLI.test.__doc__.splitlines()[0], "exit_on_error": False}},
    )


def safety_report_main(argv: list[str]) -> None:
    """``abspo safety-report``: see :func:`abspo.evaluation.safety.run_safety_report`."""
    report, kwargs = run_function_command(run_safety_report, "abspo safety-report", argv)
    print(render_markdown(report))
    print(f"written to {kwargs['out']}/report.json, report.md, exchanges.jsonl, exchanges.html")


def compare_main(argv: list[str]) -> None:
    """``abspo compare``: see :func:`abspo.evaluation.compare.run_compare`."""
    _, kwargs = run_function_command(run_compare, "abspo compare", argv)
    out = Path(kwargs["out"])
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"written to {out}/: report.md, report.json, curves-*.png, crossplay/, runs/")


def sft_main(argv: list[str]) -> None:
    """``abspo sft``: see :func:`abspo.training.sft.run_sft`."""
    record, kwargs = run_function_command(run_sft, "abspo sft", argv)
    out = Path(kwargs["out"])
    if not record["cached"]:
        losses = ", ".join(f"{x:.3f}" for x in record["epoch_loss"])
        print(f"trained on {record['rows']} pairs in {record['seconds']:.0f} s; mean loss per epoch: {losses}")
    print(f"warm start in {out}/: adapter_config.json, adapter_model.safetensors, sft.json"
          + (", tb/" if (out / "tb").is_dir() else ""))


COMMANDS: dict[str, Callable[[list[str]], None]] = {"crossplay": crossplay_command, "safety-report": safety_report_main,
                                                     "plan": plan_main, "compare": compare_main, "sft": sft_main}
"""Subcommands beside LightningCLI's, each a function whose signature is its options: they evaluate finished
adapters, plan or compare runs, or warm-start an adapter (``sft``)."""
SUBCOMMANDS = ("fit", "test", *COMMANDS)


class _RawDescriptionHelp(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help (types, defaults) that keeps the line breaks of :data:`DESCRIPTION`."""


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    with one_line_errors("abspo"):
        _main(argv, args)


def _main(argv: list[str], args: list[str] | None) -> None:
    try:
        if not argv or not (argv[0] in SUBCOMMANDS or argv[0].startswith("-")):
            raise ConfigError("command", f"unknown command {argv[0]!r}" if argv else "no command given",
                              (did_you_mean(argv[0], list(SUBCOMMANDS)) if argv else "")
                              + f"use one of: {', '.join(SUBCOMMANDS)} (abspo --help says what each does)")
        if argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        else:
            check_config_files(argv)  # a missing file or bad YAML: file:line, before anything loads
            cli_main(args)
    except TrainingStopped as err:
        print(f"abspo: training stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except SIGTERMException:  # stopped by SIGTERM or Ctrl-C after a finished batch, last.ckpt written
        print(f"abspo: stopped by a signal; last.ckpt holds every finished batch. Resume with:\n  "
              f"{preemption.resume_command(argv)}", file=sys.stderr)
        sys.exit(preemption.exit_status())


if __name__ == "__main__":
    main()
