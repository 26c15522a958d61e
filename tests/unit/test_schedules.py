"""classifier/training/schedules.py: linear warm-up, then cosine decay to 0 at the last step."""

from __future__ import annotations

import pytest


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    from classifier.training.schedules import learning_rate_schedule

    schedule = learning_rate_schedule(0.01, epochs=10, steps_per_epoch=100, warmup_epochs=2)
    rates = [float(schedule(step)) for step in range(0, 1001, 50)]
    assert rates[0] == 0.0
    assert float(schedule(100)) == pytest.approx(0.005)  # halfway through the warm-up
    assert float(schedule(200)) == pytest.approx(0.01)  # the peak, when warm-up ends
    assert float(schedule(600)) == pytest.approx(0.005)  # halfway through the decay
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-9)
    peak = rates.index(max(rates))
    assert rates[: peak + 1] == sorted(rates[: peak + 1]) and rates[peak:] == sorted(
        rates[peak:], reverse=True
    )
    no_warmup = learning_rate_schedule(0.01, epochs=10, steps_per_epoch=100, warmup_epochs=0)
    assert float(no_warmup(0)) == pytest.approx(0.01)
