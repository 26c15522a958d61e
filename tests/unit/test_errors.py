"""classifier/core/errors.py: holding Ctrl-C and SIGTERM while code must not stop halfway, and a stage
stopped while it is still importing."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from classifier.core.errors import Interrupted, interrupts_deferred, run

from conftest import PROJECT, default_signals, tool_env


@pytest.fixture
def sigterm_raises():
    """SIGTERM raising Interrupted, as under run(), and Ctrl-C raising KeyboardInterrupt as Python sets it up
    (a shell script's background job, CI's included, starts with SIGINT ignored); pytest's own handlers back
    afterwards."""

    def interrupt(signal_number: int, frame) -> None:
        raise Interrupted(signal_number)

    previous = signal.signal(signal.SIGTERM, interrupt), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_block_is_raised_when_it_ends(sigterm_raises, signal_number: int) -> None:
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    finished = False
    with pytest.raises(Interrupted) as raised, interrupts_deferred():
        signal.raise_signal(signal_number)
        finished = True  # the block was not cut halfway
    assert finished
    assert raised.value.signal_number == signal_number
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_without_a_signal_nothing_changes(sigterm_raises) -> None:
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupts_deferred():
        pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_an_ignored_signal_stays_ignored(sigterm_raises) -> None:
    """A shell's background job starts with Ctrl-C ignored: holding it must not turn it back on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupts_deferred():
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_outside_the_main_thread_nothing_is_held(sigterm_raises) -> None:
    """Only the main thread may set handlers: in another thread the block runs as it is."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    seen = []

    def block() -> None:
        with interrupts_deferred():
            seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

    thread = threading.Thread(target=block)
    thread.start()
    thread.join()
    assert seen == [handlers]


def test_a_full_disk_anywhere_is_one_line_and_exit_code_1(sigterm_raises, capsys) -> None:
    def main() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "metrics/train.json")

    with pytest.raises(SystemExit) as exited:
        run(main)
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "error: metrics/train.json: the disk is full; free some space and run the command again\n"
    )


def test_any_other_failure_keeps_its_traceback(sigterm_raises) -> None:
    def main() -> None:
        raise OSError(errno.EACCES, "Permission denied", "metrics/train.json")

    with pytest.raises(PermissionError):
        run(main)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stage_stopped_while_it_imports_says_interrupted(signal_number: int, tmp_path: Path) -> None:
    """A stage imports numpy, PIL and pydantic before run() takes over (~1 s on a busy machine): a signal
    then still gives one line and the signal's exit code, never a traceback through the imports. Here the
    import of numpy stands still until the signal comes."""
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy/__init__.py").write_text(
        "import sys, time\nprint('importing numpy', flush=True)\ntime.sleep(60)\n"
    )
    stage = subprocess.Popen(
        [sys.executable, "-m", "stages.preprocess", "raw", "prepared", "preprocess.json"],
        cwd=PROJECT,
        env={**tool_env(), "PYTHONPATH": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_signals,  # noqa: PLW1509 (only sets two handlers)
    )
    try:
        assert stage.stdout.readline() == "importing numpy\n"
        stage.send_signal(signal_number)
        output = stage.communicate(timeout=60)[0]
    finally:
        stage.kill()
    assert stage.returncode == 128 + signal_number, output
    assert output.splitlines() == ["error: interrupted"], output
