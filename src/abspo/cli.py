"""``abspo fit|validate|test``: the LightningCLI entry point.

Every run lives in one stable folder, ``<run.output_root>/<run.name>/`` (the name defaults to the config
file's stem), so that re-running the same command with ``--ckpt_path last`` resumes it:

* ``checkpoints/last.ckpt`` (+ periodic ones): adapters, optimizer/scheduler states, loop and data position
* ``tb/``: TensorBoard logs (``tensorboard --logdir checkpoints``)
* ``adapters/<role>/``: each role as a PEFT folder
* ``config.yaml``: the full resolved config

User mistakes (:class:`~abspo.errors.ConfigError`) print one message and exit with status 2.
"""

from __future__ import annotations

import functools
import os
import warnings
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from abspo.callbacks.export import AdapterExport
from abspo.callbacks.progress import game_progress_bar
from abspo.data import SeedDataModule
from abspo.errors import ConfigError
from abspo.evaluation.players import ModelDefender
from abspo.evaluation.safety import SafetyData, SafetyProtocol, build_items, safety_report
from abspo.module import SelfPlayModule


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
    overwrite: bool = False
    """Start a new run in a folder that already holds a checkpoint, replacing it. Off: such a run stops with an
    error, so an earlier run is never overwritten by accident."""


class AbspoCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunConfig, "run")
        parser.add_class_arguments(SafetyProtocol, "eval")
        parser.add_class_arguments(SafetyData, "eval_data")

    def run_dir(self) -> Path:
        cfg = self._get(self.config, "run")
        name = cfg.name
        if not name:
            configs = self._get(self.config, "config") or []
            name = Path(str(configs[-1])).stem if configs else "abspo"
        return Path(cfg.output_root) / name

    def _instantiate_trainer(self, config, callbacks):
        run = self._get(self.config, "run")
        run_dir = self.run_dir()
        config["default_root_dir"] = str(run_dir)
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="")
        user_callbacks = list(config.get("callbacks") or [])
        checkpoints = [c for c in user_callbacks + callbacks if isinstance(c, ModelCheckpoint)]
        for c in checkpoints:
            if c.dirpath is None:
                c.dirpath = str(run_dir / "checkpoints")
        if not checkpoints:
            callbacks.append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_last=True, save_top_k=0,
                                             every_n_train_steps=run.checkpoint_every_n_steps))
        if not any(isinstance(c, AdapterExport) for c in user_callbacks + callbacks):
            callbacks.append(AdapterExport(every_n_steps=run.export_every_n_steps))
        if config.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in user_callbacks + callbacks):
            callbacks.append(game_progress_bar())
        return super()._instantiate_trainer(config, callbacks)

    def before_validate(self) -> None:
        self._not_yet("validate")

    def before_predict(self) -> None:
        self._not_yet("predict")

    def _not_yet(self, subcommand: str) -> None:
        raise ConfigError(f"abspo {subcommand}", "this subcommand has no evaluation loop in this release",
                          "train with `abspo fit`; load the exported adapters/<role>/ folders with PEFT to evaluate")

    def before_fit(self) -> None:
        """Check the seeds and a resume checkpoint before anything is written: a bad run changes nothing on disk."""
        self.datamodule.setup("fit")
        ckpt = self._get(self.config, "ckpt_path")
        if ckpt is None:
            existing = self.run_dir() / "checkpoints" / "last.ckpt"
            if existing.exists() and not self._get(self.config, "run").overwrite:
                raise ConfigError("run.name", f"run folder {self.run_dir()} already holds a checkpoint",
                                  "resume it with --ckpt_path last, pick another --run.name, "
                                  "or pass --run.overwrite true to replace it")
            return
        self.model.check_checkpoint(self._read_checkpoint(ckpt))

    def _read_checkpoint(self, ckpt) -> dict:
        if str(ckpt) == "last":
            path = self.run_dir() / "checkpoints" / "last.ckpt"
            if not path.is_file():
                raise ConfigError("--ckpt_path", f"there is no checkpoint to resume at {path}",
                                  "check run.name / run.output_root (the run folder is <output_root>/<name>), "
                                  "or drop --ckpt_path to start a new run")
        else:
            path = Path(str(ckpt))
            if not path.is_file():
                raise ConfigError("--ckpt_path", f"checkpoint file {str(path)!r} does not exist",
                                  "point it at a .ckpt file, or use `last` for this run's latest checkpoint")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is a user-facing problem here
            raise ConfigError("--ckpt_path", f"{path} is not a readable checkpoint ({type(err).__name__})",
                              "point it at a checkpoint written by abspo") from None

    def test(self, model: SelfPlayModule, datamodule=None, ckpt_path=None, **_) -> dict:
        """`abspo test`: the safety report of the run's defender (from --ckpt_path, else the untrained base).

        Writes ``<run dir>/eval/<checkpoint name or 'base'>/report.{json,md}`` and ``exchanges.jsonl``, and
        logs every rate to TensorBoard under ``eval/``.
        """
        protocol, data = self._get(self.config, "eval"), self._get(self.config, "eval_data")
        protocol, data = SafetyProtocol(**vars(protocol)), SafetyData(**vars(data))
        try:
            protocol.validate()
            items = build_items(data, protocol)  # data errors before any generation
        except ConfigError as err:  # the engine names its settings protocol.*; here they are --eval.*
            raise ConfigError(err.key.replace("protocol.", "eval.", 1), err.problem, err.fix) from None
        label = "base"
        if ckpt_path is not None:
            checkpoint = self._read_checkpoint(ckpt_path)
            model.check_checkpoint(checkpoint)
            model.load_state_dict(checkpoint["state_dict"], strict=False)
            label = f"step-{checkpoint['global_step']}"
        defender = ModelDefender(functools.partial(model.bank.role, "defender"), model.tokenizer, model.game,
                                 batch_size=self._get(self.config, "data").batch_size)
        out = self.run_dir() / "eval" / label
        describe = {"defender": {"label": label, "checkpoint": str(ckpt_path) if ckpt_path else None},
                    "base": asdict(model.base_cfg)}
        report = safety_report(defender, model.judge, out, protocol, data, describe, items)
        logger = self.trainer.logger
        if logger is not None:
            scalars = {}
            for bench, entry in report["benchmarks"].items():
                rates = {entry["metric"]: entry["rate"], **{k: v["rate"] for k, v in entry.items() if isinstance(v, dict)}}
                scalars.update({f"eval/{bench}/{k}": v for k, v in rates.items() if v is not None})
            logger.log_metrics(scalars, step=int(label.split("-")[1]) if label != "base" else 0)
            logger.save()
        print(f"safety report written to {out}/report.md")
        return report


# Lightning warnings that are expected for this design and would only confuse users.
_EXPECTED_WARNINGS = (
    r".*module\(s\) in eval mode.*",  # the frozen base stays in eval mode on purpose
    r".*overridden `transfer_batch_to_device`.*",  # seeds are text; nothing to move
    r".*ModelCheckpoint with manual optimization.*",  # checkpoints are taken after both roles' steps
    r".*litlogger.*",
    r".*LeafSpec.*",
    r".*is_gradient_checkpointing.*",  # raised inside transformers by PEFT
)


def cli_main(args: list[str] | None = None, run: bool = True) -> AbspoCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    transformers.utils.logging.disable_progress_bar()
    return AbspoCLI(
        SelfPlayModule,
        SeedDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_defaults={"max_steps": 10, "enable_model_summary": False},
        parser_kwargs={"default_env": False, "prog": "abspo"},
    )


def main(args: list[str] | None = None) -> None:
    try:
        cli_main(args)
    except ConfigError as err:
        print(f"abspo: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
