"""Reading JSON Lines files given by users, with errors that name the config key and ``file:line``."""

from __future__ import annotations

import json
from pathlib import Path

from abspo.core.errors import ConfigError, undecodable_line


def read_jsonl(path: str | Path, key: str, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a missing file or a bad line is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, f"file {str(path)!r} does not exist", f"point it at a JSONL file with one {what} per line")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(key, f"{path}:{undecodable_line(data, err)} is not UTF-8 text",
                          "save the file as UTF-8 (JSON Lines files are UTF-8)") from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(key, f"{path}:{number} is not valid JSON ({err.msg})",
                              "fix or remove that line; each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise ConfigError(key, f"{path}:{number} is not a JSON object", f"write one {what} per line")
        rows.append((number, row))
    if not rows:
        raise ConfigError(key, f"file {str(path)!r} is empty", f"add one {what} per line")
    return rows
