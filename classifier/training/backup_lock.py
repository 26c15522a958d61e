"""One run at a time per backup: an flock on `<key>-worker-<i>.lock` beside the run's backups.

Two runs of the same experiment at once (the same params queued twice, `-j 2`) would otherwise write and
delete each other's epochs. The lock is the kernel's, so a run killed with SIGKILL releases it at once: no
stale lock to delete by hand. It is taken without waiting; the run that does not get it trains without
backups (the other one's result would be the same bytes anyway).

The lock file is deleted, still locked, when its run ends. A run that opened it just before then holds
a file no longer in the folder: it sees that (inode check) and opens the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from classifier.training.backup import Backup


def _try_lock(path: Path) -> int | None:
    """An open, locked descriptor of `path`; None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # deleted by the run that held it while we opened it: lock the new file


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Hold the lock on `path` for the block and yield True; yield False at once if another run holds it."""
    fd = _try_lock(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)


def is_held(path: Path) -> bool:
    """True while a running process holds the lock on `path`."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases our own lock, if we got it
    return False


@contextlib.contextmanager
def locked(backup: Backup) -> Iterator[Backup]:
    """`backup`, locked for this run for the block; keeping nothing when another run holds its lock."""
    with exclusive(backup.lock) as mine:
        if not mine:
            print(f"train: another run of this experiment holds {backup.lock}; this one starts afresh "
                  f"and keeps no backups")  # fmt: skip
            backup.keep = False
        yield backup
    with contextlib.suppress(OSError):  # empty once the last run using it has finished: leave nothing
        backup.root.rmdir()
