"""classifier/training/callbacks.py: early stopping keeps the best epoch and resumes its progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classifier.model.runtime import configure_tensorflow

from conftest import PROJECT
from conftest import build_tiny_model as build


@pytest.fixture(scope="module", autouse=True)
def seeded() -> None:
    configure_tensorflow(seed=3)


def feed(stopper, model, accuracies: dict[int, float]) -> None:
    """Play epochs to `stopper`, the weights of epoch e being all e."""
    for epoch, accuracy in accuracies.items():
        model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
        stopper.on_epoch_end(epoch, {"val_accuracy": accuracy})


ACCURACIES = {0: 0.5, 1: 0.7, 2: 0.6, 3: 0.65, 4: 0.9}


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch() -> None:
    from classifier.training.callbacks import early_stopping

    assert early_stopping(None) is None
    model = build([4])
    stopper = early_stopping(2)
    stopper.set_model(model)
    stopper.on_train_begin()
    feed(stopper, model, {e: a for e, a in ACCURACIES.items() if e < 4})
    assert model.stop_training and stopper.stopped_epoch == 3
    stopper.on_train_end()
    assert all(np.all(w == 1) for w in model.get_weights()), "the weights of epoch 1, the best"


def test_early_stopping_resumes_its_progress_from_a_backup(tmp_path: Path) -> None:
    """Interrupted after epoch 1, the resumed run still knows epoch 1 was best and stops after epoch 3."""
    from classifier.training.backup import Backup
    from classifier.training.callbacks import early_stopping

    model = build([4])
    first = early_stopping(2)
    first.set_model(model)
    first.on_train_begin()
    feed(first, model, {0: ACCURACIES[0], 1: ACCURACIES[1]})
    backup = Backup(tmp_path, "key")
    backup.save(model, 2, None, first.state())

    resumed_model = build([4])
    resumed = early_stopping(2)
    resumed.set_model(resumed_model)
    resumed.resume_from(backup.restore(resumed_model, 2, None))
    resumed.on_train_begin()
    assert resumed.best == pytest.approx(0.7) and resumed.best_epoch == 1 and resumed.wait == 0
    feed(resumed, resumed_model, {2: ACCURACIES[2], 3: ACCURACIES[3]})
    assert resumed_model.stop_training and resumed.stopped_epoch == 3
    resumed.on_train_end()
    assert all(np.all(w == 1) for w in resumed_model.get_weights())


def noisy_cosine_curve(epochs: int = 100, seed: int = 4) -> dict[int, float]:
    """Validation accuracy as issue 16 saw it under a cosine schedule: a fast rise, then swings of up to
    8 points while the rate is high, shrinking with the rate; the real climb comes in the low-rate epochs."""
    import math

    rng = np.random.default_rng(seed)
    curve = {}
    for epoch in range(epochs):
        rate = 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        noise = 0.04 * rate * rng.uniform(-1, 1)
        curve[epoch] = round(0.64 - 0.12 * rate - 0.25 * math.exp(-epoch / 4) + noise, 4)
    return curve


def play(accuracies: dict[int, float], patience: int | None, **options):
    """A fresh stopper fed `accuracies` until it stops, and the model it trained (its weights put back)."""
    from classifier.training.callbacks import early_stopping

    model = build([4])
    stopper = early_stopping(patience, **options)
    stopper.set_model(model)
    stopper.on_train_begin()
    for epoch, accuracy in accuracies.items():
        feed(stopper, model, {epoch: accuracy})
        if model.stop_training:
            break
    stopper.on_train_end()
    return stopper, model


def kept_epoch(model) -> int:
    [epoch] = {int(np.asarray(w).flat[0]) for w in model.get_weights()}
    return epoch


def test_noise_in_the_high_rate_phase_stops_plain_patience_but_not_the_new_options() -> None:
    curve = noisy_cosine_curve()
    plain, model = play(curve, 10)
    assert 0 < plain.stopped_epoch < 50, "the issue: a lucky epoch stops the run halfway"
    assert curve[kept_epoch(model)] < 0.60 < curve[99]

    late, model = play(curve, 10, start_epoch=80)  # train.early_stopping_from: 0.8 of 100 epochs
    assert not model.stop_training and late.stopped_epoch == 0
    assert kept_epoch(model) == late.best_epoch == 99, "the low-rate epochs climb past the lucky one"

    smooth, model = play(curve, 10, smoothing=0.8)
    assert not model.stop_training and kept_epoch(model) == 99


def test_nothing_before_start_epoch_stops_the_run_or_counts_toward_patience() -> None:
    falling = {0: 0.9, 1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5, 5: 0.5}
    stopper, model = play(falling, 2, start_epoch=3)
    assert stopper.stopped_epoch == 4, "epochs 3 and 4 are the 2 counted epochs without a better one"
    assert kept_epoch(model) == 0


def test_min_delta_counts_only_improvements_by_more_than_it() -> None:
    creeping = {0: 0.5, 1: 0.505, 2: 0.509, 3: 0.5095, 4: 0.52, 5: 0.52}
    stopper, model = play(creeping, 3)
    assert not model.stop_training and kept_epoch(model) == 4
    stopper, model = play(creeping, 3, min_delta=0.01)
    assert stopper.stopped_epoch == 3, "+0.005, +0.009 and +0.0095 over epoch 0 are not improvements"
    assert kept_epoch(model) == 3, "the weights kept are still the highest val_accuracy's"
    stopper, model = play(creeping, 4, min_delta=0.01)
    assert not model.stop_training and stopper.reference == 0.52, "0.52 beats 0.5 by more than 0.01"


def test_smoothing_waits_for_a_better_moving_average() -> None:
    """A lucky spike lifts the average by (1 - s) of its height only: a steady rise beats it again soon."""
    spike = {e: round(0.5 + 0.004 * e + (0.08 if e == 3 else 0.0), 4) for e in range(14)}
    raw, _ = play(spike, 4)
    assert raw.stopped_epoch == 7, "the raw value needs 20 epochs of the rise to beat the spike"
    smooth, model = play(spike, 4, smoothing=0.8)
    assert not model.stop_training and kept_epoch(model) == 3, "the spike is still the best epoch kept"
    ema = spike[0]
    for epoch in range(1, 14):
        ema = 0.8 * ema + 0.2 * spike[epoch]
    assert smooth.ema == pytest.approx(ema, abs=1e-12) and smooth.reference == smooth.ema
    lagging, _ = play(spike, 4, smoothing=0.5)
    assert lagging.stopped_epoch == 7, "s = 0.5 gives the spike too much weight"


def test_keep_best_keeps_the_best_weights_without_stopping() -> None:
    from classifier.training.callbacks import early_stopping

    assert early_stopping(None, keep_best=False) is None
    stopper, model = play(noisy_cosine_curve(), None, keep_best=True)
    assert not model.stop_training and stopper.stopped_epoch == 0
    curve = noisy_cosine_curve()
    assert kept_epoch(model) == max(curve, key=lambda e: (curve[e], -e)) == 99
    stopper, model = play(ACCURACIES, None, keep_best=True)
    assert kept_epoch(model) == 4 and not model.stop_training


def test_the_params_set_the_options() -> None:
    from classifier.core.params import load_params
    from classifier.training.callbacks import early_stopping_for, first_counted_epoch

    assert first_counted_epoch(0.8, 100) == 80 and first_counted_epoch(0.29, 100) == 29
    assert first_counted_epoch(0.0, 7) == 0 and first_counted_epoch(0.5, 5) == 2
    train = load_params(PROJECT / "params.yaml").train.model_copy(
        update={"early_stopping": None, "keep_best": False, "early_stopping_from": 0.0, "epochs": 100,
                "early_stopping_min_delta": 0.0, "early_stopping_smoothing": 0.0}
    )  # fmt: skip
    assert early_stopping_for(train) is None
    assert early_stopping_for(train.model_copy(update={"keep_best": True})) is not None
    model = build([4])
    stopper = early_stopping_for(train.model_copy(update={"early_stopping": 2, "early_stopping_from": 0.03}))
    stopper.set_model(model)
    stopper.on_train_begin()
    feed(stopper, model, {e: 0.5 for e in range(5)})
    assert stopper.stopped_epoch == 4, "epochs 0-2 are before 3% of 100; 3 and 4 count"


RESUMED_OPTIONS = {"start_epoch": 30, "min_delta": 0.003, "smoothing": 0.6}


def test_the_new_options_resume_from_a_backup_and_stop_at_the_same_epoch(tmp_path: Path) -> None:
    """Interrupted after epoch 33, the resumed run carries on with the same average, reference and wait."""
    from classifier.training.backup import Backup
    from classifier.training.callbacks import early_stopping

    curve = noisy_cosine_curve()
    uninterrupted, model = play(curve, 4, **RESUMED_OPTIONS)
    assert uninterrupted.stopped_epoch == 36 and kept_epoch(model) == uninterrupted.best_epoch == 35

    model = build([4])
    first = early_stopping(4, **RESUMED_OPTIONS)
    first.set_model(model)
    first.on_train_begin()
    feed(first, model, {e: curve[e] for e in range(34)})
    assert not model.stop_training and {"ema", "reference", "wait", "best"} <= set(first.state())
    backup = Backup(tmp_path, "key")
    backup.save(model, 34, None, first.state())

    resumed_model = build([4])
    resumed = early_stopping(4, **RESUMED_OPTIONS)
    resumed.set_model(resumed_model)
    resumed.resume_from(backup.restore(resumed_model, 34, None))
    resumed.on_train_begin()
    assert (resumed.ema, resumed.reference, resumed.wait, resumed.best) == (
        first.ema,
        first.reference,
        first.wait,
        first.best,
    )
    for epoch in range(34, 100):
        feed(resumed, resumed_model, {epoch: curve[epoch]})
        if resumed_model.stop_training:
            break
    resumed.on_train_end()
    assert resumed.stopped_epoch == 36 and kept_epoch(resumed_model) == 35
