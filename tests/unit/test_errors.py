"""classifier/core/errors.py: holding Ctrl-C and SIGTERM while code must not stop halfway."""

from __future__ import annotations

import signal

import pytest

from classifier.core.errors import Interrupted, interrupts_deferred


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
