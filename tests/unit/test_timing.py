"""classifier/training/timing.py: each epoch timed by a real Keras fit, the times carried in a backup's state, and
the summary the train stage writes to metrics/timing/train.json."""

from __future__ import annotations

import time

import numpy as np
import pytest

from classifier.training.timing import STATE_KEY, describe, epoch_timer, median_epoch, train_timing

from conftest import build_tiny_model


def test_a_real_fit_times_every_epoch_and_a_resumed_timer_goes_on_counting() -> None:
    import keras

    model = build_tiny_model([4])
    images = np.zeros((8, 8, 8, 3), dtype=np.uint8)
    targets = keras.utils.to_categorical(np.arange(8) % 3, 3)
    slow = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(0.05))
    timer = epoch_timer()
    model.fit(images, targets, epochs=3, verbose=0, callbacks=[slow, timer])  # slow: listed before the timer
    assert len(timer.seconds) == 3 and all(seconds >= 0.05 for seconds in timer.seconds)

    resumed = epoch_timer()
    resumed.resume_from(timer.state())
    model.fit(images, targets, initial_epoch=3, epochs=5, verbose=0, callbacks=[resumed])
    assert resumed.seconds[:3] == timer.seconds and len(resumed.seconds) == 5
    assert epoch_timer().state()[STATE_KEY].shape == (0,)


def test_the_summary_sums_the_epochs_and_the_log_gives_their_median() -> None:
    assert train_timing([2.0, 3.0, 10.04]) == {"seconds": 15.0}
    assert train_timing([]) == {"seconds": 0.0}
    assert median_epoch([2.0, 3.0, 10.0]) == 3.0 and median_epoch([]) == 0.0


@pytest.mark.parametrize(("seconds", "text"), [(42.04, "42.0 s"), (119.9, "119.9 s"), (1938.0, "32.3 min")])
def test_times_read_in_seconds_then_minutes(seconds: float, text: str) -> None:
    assert describe(seconds) == text
