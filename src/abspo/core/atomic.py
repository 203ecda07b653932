"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Reports, game pages and exports are read while a long run is still writing, and a run may be killed at any
moment; writing to a temporary sibling and renaming it into place (``os.replace`` is atomic on one file
system) keeps every file whole.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """An open binary file that becomes ``path`` when the block ends without an error: written to a temporary
    sibling, flushed to disk (fsync), given the permissions the umask gives an ordinary file (a temporary file
    is created private, 0600), renamed into place and the rename itself made durable (fsync of the folder).
    Until the rename a reader, or a run killed mid-write, sees the previous file whole; on an error it stays.
    Temporary siblings of ``path`` that a killed writer left behind are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}-"
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Fill a temporary sibling of ``folder`` (yielded) and swap it into place on success, so a crash mid-write
    never corrupts a folder written earlier; on an error the old folder is kept and the temporary one removed.

    The swap is two renames (:func:`swap_into_place`); a folder left aside by a kill between them is put back
    (:func:`recover_folder`) before the next write."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # an ordinary folder, not mkdtemp's private 0700: teammates read exports
        yield tmp
        for path in tmp.rglob("*"):  # some writers (safetensors) create their files private, 0600
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
        swap_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _aside(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def swap_into_place(new: Path, folder: Path) -> None:
    """Make the complete folder ``new`` be ``folder``: the old one renamed aside, ``new`` renamed in, the old one
    removed. A kill between the two renames leaves ``folder`` missing and the old one aside, which
    :func:`recover_folder` puts back."""
    old = _aside(folder)
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    _fsync_folder(folder.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_folder(folder: str | Path) -> None:
    """Undo a swap that a kill interrupted between its two renames: put the old folder back where it was."""
    folder = Path(folder)
    if not folder.exists() and _aside(folder).is_dir():
        _aside(folder).rename(folder)
