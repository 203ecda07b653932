"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Reports, game pages and exports are read while a long run is still writing, and a run may be killed at any
moment; writing to a temporary sibling and renaming it into place (``os.replace`` is atomic on one file
system) keeps every file whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to a temporary file beside ``path`` and rename it into place, with the
    permissions the umask gives an ordinary file (a temporary file is created private, 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Fill a temporary sibling of ``folder`` (yielded) and swap it into place on success, so a crash mid-write
    never corrupts a folder written earlier; on an error the old folder is kept and the temporary one removed.

    The swap is two renames (old aside, new in place); a folder left aside by a kill between them is cleared on
    the next write."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # an ordinary folder, not mkdtemp's private 0700: teammates read exports
        yield tmp
        for path in tmp.rglob("*"):  # some writers (safetensors) create their files private, 0600
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
