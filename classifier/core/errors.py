"""What a user sees when something goes wrong: one line, no traceback, and an exit code that says why.

- StageError, a problem the user can fix (bad param, bad input file): `error: <message>`, exit code 1;
- a full disk anywhere: `error: <path>: the disk is full ...`, exit code 1 (nothing half-written stays:
  every output is written through classifier.core.files.atomic_path);
- Ctrl-C (SIGINT) or SIGTERM (sent by `timeout`, container stops, batch schedulers): `error: interrupted`,
  exit code 130 or 143, from a stage's first import on (stages/__init__.py).
"""

from __future__ import annotations

import contextlib
import errno
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class StageError(Exception):
    """A problem the user can fix (bad param, bad input file); shown as one line, no traceback."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signal_number` says which."""

    def __init__(self, signal_number: int = signal.SIGINT):
        super().__init__()
        self.signal_number = signal_number


def is_disk_full(error: BaseException) -> bool:
    """True for 'no space left on device' (or over quota), however the library reports it: h5py, for
    one, puts the errno only in its message."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    text = str(error)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text


def disk_full_message(path: Any, needed: int | None = None, free: int | None = None) -> str:
    """`<path>: the disk is full (...)`, with the size the write needed and what is free, where known."""
    sizes = []
    if needed is not None:
        sizes.append(f"it needs {needed / 1e6:,.1f} MB")
    if free is not None:
        sizes.append(f"{free / 1e6:,.1f} MB free")
    detail = f" ({', '.join(sizes)})" if sizes else ""
    return f"{path}: the disk is full{detail}; free some space and run the command again"


def _interrupt(signal_number: int, frame: Any) -> None:
    raise Interrupted(signal_number)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then raise Interrupted as usual.

    For code that must not stop halfway, such as creating a process pool: an exception raised in the middle
    of it can leave a forked process that nobody knows about, or a pool that cannot shut down. The signals
    still reach this process at once (blocking them instead would make the kernel hand them to another
    thread, and Python may then run the handler late), and processes forked in the block start with the
    holding handler: a signal there is held, never a traceback.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread has handlers
        yield
        return
    held: list[int] = []

    def hold(signal_number: int, frame: Any) -> None:
        held.append(signal_number)

    previous = {}
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            if callable(signal.getsignal(number)):  # SIG_IGN stays ignored, SIG_DFL stays fatal
                previous[number] = signal.signal(number, hold)
        yield
    finally:
        with contextlib.ExitStack() as restore:  # every handler, even if a signal raises in between
            for number, handler in previous.items():
                restore.callback(signal.signal, number, handler)
        if held:
            raise Interrupted(held[0])


def _exit_interrupted(signal_number: int, frame: Any) -> None:
    print("error: interrupted", file=sys.stderr)
    raise SystemExit(128 + signal_number)


def exit_cleanly_while_starting() -> None:
    """Until run() takes over, Ctrl-C or SIGTERM ends the process with `error: interrupted` and its exit code.

    A stage spends its first seconds importing (TensorFlow alone takes ~7 s): nothing to clean up yet, and a
    KeyboardInterrupt there would print a traceback through the import machinery. SystemExit ends the
    process without one. A Ctrl-C ignored from the start (a shell script's background job) stays ignored.
    """
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_interrupted)
    signal.signal(signal.SIGTERM, _exit_interrupted)


def run(main: Callable[[], None]) -> None:
    """Run a stage's or command's main(), turning every failure a user can meet into one line."""
    if signal.getsignal(signal.SIGINT) is _exit_interrupted:  # from here on, Ctrl-C cleans up as it unwinds
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)  # so SIGTERM cleans up as Ctrl-C does
    try:
        main()
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as error:
        print("error: interrupted", file=sys.stderr)
        sys.exit(128 + getattr(error, "signal_number", signal.SIGINT))
    except Exception as error:
        if not is_disk_full(error):
            raise
        print(f"error: {disk_full_message(getattr(error, 'filename', None) or 'a file')}", file=sys.stderr)
        sys.exit(1)
