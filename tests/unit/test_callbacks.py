"""classifier/callbacks.py: early stopping keeps the best epoch and resumes its progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classifier.runtime import configure_tensorflow


@pytest.fixture(scope="module", autouse=True)
def seeded() -> None:
    configure_tensorflow(seed=3)


def build(hidden_units: list[int], **options):
    from classifier.model import build_model, compile_model

    model = build_model(8, 3, hidden_units, "relu", **options)
    compile_model(model, "adam", 0.001, "categorical_crossentropy")
    return model


def feed(stopper, model, accuracies: dict[int, float]) -> None:
    """Play epochs to `stopper`, the weights of epoch e being all e."""
    for epoch, accuracy in accuracies.items():
        model.set_weights([np.full_like(w, epoch) for w in model.get_weights()])
        stopper.on_epoch_end(epoch, {"val_accuracy": accuracy})


ACCURACIES = {0: 0.5, 1: 0.7, 2: 0.6, 3: 0.65, 4: 0.9}


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch() -> None:
    from classifier.callbacks import early_stopping

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
    from classifier.backup import Backup
    from classifier.callbacks import early_stopping

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
