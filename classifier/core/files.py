"""Atomic writes, so outputs appear whole or not at all (a crash, a kill or a full disk leaves the previous
file, or none), and small JSON/text helpers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from classifier.core.errors import StageError, disk_full_message, is_disk_full

# Every zip we write carries this date, so the same content always gives the same bytes.
FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class DiskFull(StageError):
    """The disk filled up while writing an output (or would have: see check_free_space)."""


def free_bytes(path: str | os.PathLike) -> int:
    """Free space on the filesystem that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """Raise DiskFull before writing `needed` bytes at `path` if the disk cannot hold them."""
    free = free_bytes(path)
    if free < needed:
        raise DiskFull(disk_full_message(path, needed, free))


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to the disk: a power loss then keeps what was written."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raise_disk_full(error: Exception, path: Path, size: int | None = None) -> None:
    """Raise DiskFull naming `path` in place of a 'no space left' error; return for any other error."""
    if not isinstance(error, StageError) and is_disk_full(error):
        raise DiskFull(disk_full_message(path, size, free_bytes(path.parent))) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; flush it and rename it over `path` only if the block succeeds.

    `size`, when known, is checked against the free space first. A full disk during the block is one
    DiskFull error naming `path`; the temporary file is removed whatever happens.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if size is not None:
            check_free_space(path, size)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except Exception as error:
        raise_disk_full(error, path, size)
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; if the block succeeds, flush every file in it and put
    it in place of `path` by renames (the old folder, if any, is deleted after). Removed on any failure."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700 folders; outputs get the usual permissions
        yield tmp
        for item in sorted(tmp.rglob("*"), reverse=True):  # files before the folders that hold them
            fsync_path(item)
        fsync_path(tmp)
        old = None
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        tmp = None
        fsync_path(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as error:
        raise_disk_full(error, path)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, content: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(content, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
