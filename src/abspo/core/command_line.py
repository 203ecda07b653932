"""A Python function as an ``abspo`` subcommand, and the setup every subcommand shares.

``abspo crossplay``, ``safety-report``, ``compare`` and ``sft`` are each one function whose signature and
docstring are the command's options and ``--help`` (:func:`run_function_command`). The parser lives here,
below the evaluation code rather than in :mod:`abspo.cli`, because one command runs another: ``abspo compare``
plays its cross-play tournament through the very options ``abspo crossplay`` reads, and so must not import
the CLI above it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import transformers

from abspo.core.errors import check_output_folder
from abspo.core.parse_errors import check_config_files, config_error

# Lightning warnings that are expected for this design and would only confuse users.
EXPECTED_WARNINGS = (
    r".*module\(s\) in eval mode.*",  # the frozen base stays in eval mode on purpose
    r".*overridden `transfer_batch_to_device`.*",  # seeds are text; nothing to move
    r".*ModelCheckpoint with manual optimization.*",  # checkpoints are taken after both roles' steps
    r".*litlogger.*",
    r".*LeafSpec.*",
    r".*is_gradient_checkpointing.*",  # raised inside transformers by PEFT
    r".*torch.distributed is disabled, unavailable or uninitialized.*",  # a sharded checkpoint read in one process
)


def prepare_command_line() -> None:
    """Settings every abspo command shares: field docstrings in --help, expected warnings silenced."""
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # dataclass field docs become --help text
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    transformers.utils.logging.disable_progress_bar()


def progress_lines() -> None:
    """Show abspo's INFO lines (``generated 16/120``...): an evaluation on a CPU runs for many minutes."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("abspo").setLevel(logging.INFO)


def run_function_command(fn: Callable[..., Any], prog: str, argv: list[str]) -> tuple[Any, dict[str, Any]]:
    """Parse ``argv`` into ``fn``'s arguments (its signature and docstring are the options and --help) and call it.

    The options use abspo's config syntax: nested dataclass fields (``--protocol.limit``), a class path with
    ``--judge.init_args.<arg>``, and ``--config file.yaml`` holding any of them. Returns (result, arguments).
    """
    from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

    prepare_command_line()
    progress_lines()
    check_config_files(argv)
    parser = ArgumentParser(prog=prog, description=fn.__doc__.splitlines()[0], default_env=False, exit_on_error=False,
                            allow_abbrev=False)  # a misspelt --epoch must not run as --epochs
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    parser.add_function_arguments(fn)
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as err:  # one line naming the option (and file:line), as for fit
        known = [o for o in parser._option_string_actions if o.startswith("--")]
        raise config_error(str(err), argv, known, prog) from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    kwargs = instantiate(cfg).as_dict()
    kwargs.pop("config", None)
    if kwargs.get("out") is not None:
        check_output_folder(kwargs["out"], "--out")
    return fn(**kwargs), kwargs
