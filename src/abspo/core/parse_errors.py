"""The argument parser's errors as one :class:`~abspo.core.errors.ConfigError` line: which key, in which file and line,
what is wrong, what to write instead.

jsonargparse reports a bad config as a usage wall followed by a nested error ("Parser key "model.algorithm": Does
not validate against any of the Union subtypes ... Option 'kl_coeff' is not accepted"), and a YAML syntax error
against "<unicode string>" rather than the file. :func:`config_error` reads those messages back into the key
path, finds the line of the key in the config files, and suggests the closest valid key.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import yaml

from abspo.core.errors import ConfigError, did_you_mean, undecodable_line


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
        raise ConfigError(f"{path}:{undecodable_line(raw, err)}", "not UTF-8 text", "save the file as UTF-8") from None
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


def _where(key: str, argv: list[str]) -> str:
    """Where ``key`` was set: ``--key`` when the command line sets it (it overrides the files), else
    ``file:line: key`` for the last config file that sets it (found by its whole path in the YAML, so that
    ``defender: {lr: ...}`` is not mistaken for the attacker's ``lr``), else ``key``."""
    if any(a == f"--{key}" or a.startswith(f"--{key}=") for a in argv):
        return f"--{key}"
    parts = key.split(".")
    for path in reversed(config_files(argv)):
        line = _line_of(path, parts) or _line_of(path, [p for p in parts if p != "init_args"])
        if line is not None:
            return f"{path}:{line}: {key}"
    return key


def _line_of(path: Path, keys: list[str]) -> int | None:
    """The 1-based line of the nested mapping key ``keys`` in the YAML file ``path``, None where it is not set."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for k in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        match = next(((kn, vn) for kn, vn in node.value if getattr(kn, "value", None) == k), None)
        if match is None:
            return None
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def _entry_of(message: str, inner: str) -> str:
    """``<name>.`` of the entry of a dict-valued key (``model.optimizers``) whose value failed on ``inner``: the one
    given as ``NestedArg(key='<name>.<inner>')`` on the command line, or the one whose value is still a plain dict
    holding ``inner`` (the entries that validated are Namespaces by then); else ``""``."""
    nested = re.search(rf"NestedArg\(key='([\w-]+)\.{re.escape(inner)}'", message)
    if nested:
        return nested.group(1) + "."
    raw = re.search(rf"'([\w-]+)': \{{[^{{}}]*'{re.escape(inner)}':", message)
    return raw.group(1) + "." if raw else ""


def config_error(message: str, argv: list[str], known_options: list[str] = (), command: str = "abspo fit",
                 ) -> ConfigError:
    """The ConfigError for a jsonargparse error ``message`` raised while parsing ``argv`` (``known_options``: the
    parser's option strings, for suggestions; ``command``: whose ``--help`` lists the options)."""
    outer = re.match(r'Parser key "([^"]+)"', message)
    class_path = re.search(r"class_path '([\w.]+)'", message)
    unknown = re.search(r"Option '(\w+)' is not accepted", message)
    if outer and unknown:
        key = f"{outer.group(1)}.{unknown.group(1)}"
        options = accepted_options(class_path.group(1)) if class_path else []
        return ConfigError(_where(key, argv), "unknown key", f"{did_you_mean(unknown.group(1), options)}valid keys "
                           f"here: {', '.join(options) if options else f'see {command} --help'}")
    missing = re.search(r"Problem with given class_path '([\w.]+)':\s*\n\s*(module '[\w.]+' has no attribute '\w+'|"
                        r"No module named '[\w.]+')", message)
    if outer and missing:  # a class_path that names no class
        module, _, name = missing.group(1).rpartition(".")
        try:
            found = importlib.import_module(module)
            names = [n for n in getattr(found, "__all__", dir(found)) if not n.startswith("_")]
        except ImportError:
            names = []
        return ConfigError(_where(outer.group(1), argv), f"no class {missing.group(1)!r} ({missing.group(2)})",
                           f"{did_you_mean(name, names)}check the class_path's spelling (docs/judges.md lists the judges)")
    inner = re.search(r'Parser key "([^"]+)":\s*\n\s*(Expected [^\n]+)', message)
    if outer and inner and inner.group(1) != outer.group(1):
        key = f"{outer.group(1)}.{_entry_of(message, inner.group(1))}{inner.group(1)}"
        return ConfigError(_where(key, argv), f"wrong value: {inner.group(2).strip()}",
                           f"give a value of that type (see {command} --help for each key's type)")
    if outer:
        detail = next((line.strip() for line in message.splitlines()[1:] if line.strip().startswith("Expected")),
                      message.splitlines()[-1].strip())
        return ConfigError(_where(outer.group(1), argv), f"wrong value: {detail}",
                           f"see {command} --help for the key's type")
    not_accepted = re.search(r"does not accept (?:option|nested key) '([\w.]+)'", message)
    if not_accepted:  # a key of a config file that no section has
        key = not_accepted.group(1)
        hint = did_you_mean(f"--{key}", list(known_options)).replace("'--", "'")
        return ConfigError(_where(key, argv), "unknown key", f"{hint}check the spelling against {command} --help")
    unrecognized = re.match(r"unrecognized arguments: (.*)", message)
    if unrecognized:
        options = [a.split("=", 1)[0] for a in unrecognized.group(1).split() if a.startswith("--")]
        hint = did_you_mean(options[0], list(known_options)) if options else ""
        return ConfigError(", ".join(options) or "arguments", "unknown option",
                           f"{hint}check the spelling against {command} --help" + (
                               " (options are --<section>.<key>, e.g. --model.algorithm.kl_coef, --trainer.max_steps, "
                               "--run.name)" if command == "abspo fit" else ""))
    return ConfigError("arguments", message.strip().splitlines()[0], f"see {command} --help")
