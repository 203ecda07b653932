"""The argument parser's errors as one :class:`~abspo.errors.ConfigError` line: which key, in which file and line,
what is wrong, what to write instead.

jsonargparse reports a bad config as a usage wall followed by a nested error ("Parser key "model.algorithm": Does
not validate against any of the Union subtypes ... Option 'kl_coeff' is not accepted"), and a YAML syntax error
against "<unicode string>" rather than the file. :func:`config_error` reads those messages back into the key
path, finds the line of the key in the config files, and suggests the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
from pathlib import Path

import yaml

from abspo.errors import ConfigError


def config_files(argv: list[str]) -> list[Path]:
    """The ``--config`` files of a command line, in order."""
    out = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out.append(Path(argv[i + 1]))
        elif arg.startswith("--config="):
            out.append(Path(arg.split("=", 1)[1]))
    return out


def check_config_files(argv: list[str]) -> None:
    """Each ``--config`` file exists and is valid YAML; else a ConfigError naming the file and line."""
    for path in config_files(argv):
        read_config_file(path)


def read_config_file(path: str | Path, key: str = "--config") -> dict:
    """The settings of one config file; a ConfigError naming ``key`` or the file (and line) where it cannot
    hold any: missing, not UTF-8, not YAML, or not a mapping of settings (empty, only comments, a list)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, f"{path} does not exist", "check the path (configs/ holds the shipped ones)")
    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}", "not UTF-8 text", "save the file as UTF-8") from None
    except OSError as err:
        raise ConfigError(key, f"cannot read {path} ({err.strerror})", "pass a readable config file") from None
    except yaml.YAMLError as err:
        raise yaml_error(path, err) from None
    if not isinstance(data, dict):
        held = "no settings (it is empty or only comments)" if data is None else f"a {type(data).__name__}"
        raise ConfigError(str(path), f"holds {held}, not a mapping of settings",
                          "write sections of key: value settings, e.g. `trainer: {max_steps: 10}`")
    return data


def yaml_error(path: str | Path, err: yaml.YAMLError) -> ConfigError:
    """A YAML syntax error as ``file:line: not valid YAML: ...``. The context mark is where the broken construct
    opened (a bracket, a block), the problem mark where the parser gave up (often the end of the file): the first
    is the line to look at."""
    mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = " ".join(x for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x) \
        or str(err).splitlines()[0]
    return ConfigError(where, f"not valid YAML: {problem}",
                       "fix the syntax at that line (indentation, a missing ':', an unclosed bracket or quote)")


def accepted_options(class_path: str) -> list[str]:
    """The option names a dataclass or class accepts (its fields, or its ``__init__`` parameters)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]


def _where(key: str, files: list[Path]) -> str:
    """``file:line key`` for the last config file that sets ``key``'s last component, else ``key``."""
    leaf = key.rsplit(".", 1)[-1]
    pattern = re.compile(rf"^\s*{re.escape(leaf)}\s*:")
    for path in reversed(files):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for n, line in enumerate(lines, 1):
            if pattern.match(line):
                return f"{path}:{n}: {key}"
    return key


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def config_error(message: str, argv: list[str], known_options: list[str] = (), command: str = "abspo fit",
                 ) -> ConfigError:
    """The ConfigError for a jsonargparse error ``message`` raised while parsing ``argv`` (``known_options``: the
    parser's option strings, for suggestions; ``command``: whose ``--help`` lists the options)."""
    files = config_files(argv)
    outer = re.match(r'Parser key "([^"]+)"', message)
    class_path = re.search(r"class_path '([\w.]+)'", message)
    unknown = re.search(r"Option '(\w+)' is not accepted", message)
    if outer and unknown:
        key = f"{outer.group(1)}.{unknown.group(1)}"
        options = accepted_options(class_path.group(1)) if class_path else []
        return ConfigError(_where(key, files), "unknown key", f"{_suggest(unknown.group(1), options)}valid keys "
                           f"here: {', '.join(options) if options else f'see {command} --help'}")
    inner = re.search(r'Parser key "([^"]+)":\s*\n\s*(Expected [^\n]+)', message)
    if outer and inner and inner.group(1) != outer.group(1):
        key = f"{outer.group(1)}.{inner.group(1)}"
        return ConfigError(_where(key, files), f"wrong value: {inner.group(2).strip()}",
                           f"give a value of that type (see {command} --help for each key's type)")
    if outer:
        detail = next((line.strip() for line in message.splitlines()[1:] if line.strip().startswith("Expected")),
                      message.splitlines()[-1].strip())
        return ConfigError(_where(outer.group(1), files), f"wrong value: {detail}",
                           f"see {command} --help for the key's type")
    unrecognized = re.match(r"unrecognized arguments: (.*)", message)
    if unrecognized:
        options = [a.split("=", 1)[0] for a in unrecognized.group(1).split() if a.startswith("--")]
        hint = _suggest(options[0], list(known_options)) if options else ""
        return ConfigError(", ".join(options) or "arguments", "unknown option",
                           f"{hint}check the spelling against {command} --help" + (
                               " (options are --<section>.<key>, e.g. --model.algorithm.kl_coef, --trainer.max_steps, "
                               "--run.name)" if command == "abspo fit" else ""))
    return ConfigError("arguments", message.strip().splitlines()[0], f"see {command} --help")
