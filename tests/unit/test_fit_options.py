"""classifier/training/fit.py with the options beyond the recipe (schedule, early stopping, augmentation, dropout), each on tiny data: identical run to run, validation unaugmented, resumed exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.model.saving import save_model
from conftest import PROJECT, tool_env, write_tiny_splits

FIT_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
import keras
import numpy as np
from classifier.training.backup import Backup
from classifier.training.batches import load_images
from classifier.training.callbacks import callback_state, early_stopping_for, restore_callback_state
from classifier.training.fit import fit
from classifier.model.saving import load_model
from classifier.model.runtime import configure_tensorflow
from classifier.training.schedules import use_learning_rate_schedule

data, settings, stop_after = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
configure_tensorflow(seed=7, threads=1)
model = load_model(data / "compiled.keras")
train, validation = load_images(data / "train.npz"), load_images(data / "validation.npz")
backup = Backup(Path(sys.argv[4]), "run")
stopper = early_stopping_for(settings)
initial_epoch = backup.latest()
use_learning_rate_schedule(model, settings, len(train[1]))  # as the stage does: before loading a backup
if initial_epoch:
    restore_callback_state(model, stopper, backup.restore(model, initial_epoch, None))
stop = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: e + 1 == stop_after and setattr(model, "stop_training", True))
history = fit(model, train, validation, settings, 7, [stopper, backup.callback(model, None, lambda: callback_state(model, stopper)), stop],
              verbose=0, initial_epoch=initial_epoch)
targets = np.eye(3, dtype=np.float32)[validation[1]]
unaugmented = model.evaluate(validation[0], targets, batch_size=16, verbose=0, return_dict=True)
print(json.dumps({
    "weights": hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.weights)).hexdigest(),
    "history": history.history,
    "best_epoch": stopper.best_epoch,
    "unaugmented": unaugmented,
    "learning_rate": float(model.optimizer.learning_rate),
}))
"""


SETTINGS = {
    "batch_size": 16, "epochs": 4, "threads": 1, "steps_per_execution": 2, "jit_compile": True,
    "distribution": "single", "lr_schedule": "cosine", "warmup_epochs": 1, "early_stopping": 3,
    "early_stopping_from": 0.0, "early_stopping_min_delta": 0.0, "early_stopping_smoothing": 0.0, "keep_best": False,
    "augment": {"flip": True, "crop_padding": 2},
}  # fmt: skip


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny splits and a compiled model using every new model param."""
    from classifier.model.build import build_model, compile_model

    folder = write_tiny_splits(tmp_path_factory.mktemp("recipe"), seed=2)
    model = build_model(32, 3, [32, 32], "relu", normalization="batch", dropout=0.2, residual=True, seed=7)
    compile_model(model, "adamw", 0.003, "categorical_crossentropy", weight_decay=0.01, label_smoothing=0.1)
    save_model(model, folder / "compiled.keras")
    return folder


def fit_in_subprocess(data: Path, backup: Path, stop_after: int = 0, **overrides) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT, str(data), json.dumps({**SETTINGS, **overrides}), str(stop_after), str(backup)],
        cwd=PROJECT, env=tool_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def uninterrupted(recipe_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return fit_in_subprocess(recipe_data, tmp_path_factory.mktemp("backup"))


def test_every_new_param_trains_identically_run_to_run(recipe_data: Path, uninterrupted: dict, tmp_path: Path) -> None:
    again = fit_in_subprocess(recipe_data, tmp_path / "backup")
    assert again["weights"] == uninterrupted["weights"]
    assert again["history"] == uninterrupted["history"]


def test_validation_sees_the_images_unaugmented(uninterrupted: dict) -> None:
    """The best epoch's validation loss and accuracy, logged during training, are what the kept model
    scores on the raw validation images: validation batches were never flipped or shifted."""
    history = uninterrupted["history"]
    best = uninterrupted["best_epoch"]
    assert uninterrupted["unaugmented"]["loss"] == pytest.approx(history["val_loss"][best], rel=1e-5)
    assert uninterrupted["unaugmented"]["accuracy"] == pytest.approx(history["val_accuracy"][best])
    assert uninterrupted["learning_rate"] == pytest.approx(0.0, abs=1e-9), "cosine decays to 0 at the last step"


def test_augmentation_changes_training(recipe_data: Path, uninterrupted: dict, tmp_path: Path) -> None:
    plain = fit_in_subprocess(recipe_data, tmp_path / "backup", augment={"flip": False, "crop_padding": 0})
    assert plain["weights"] != uninterrupted["weights"]


def test_interrupted_run_resumes_exactly(recipe_data: Path, uninterrupted: dict, tmp_path: Path) -> None:
    """Dropout, batch norm, augmentation, the schedule and early stopping all continue where they were."""
    fit_in_subprocess(recipe_data, tmp_path / "backup", stop_after=2)
    resumed = fit_in_subprocess(recipe_data, tmp_path / "backup")
    assert resumed["weights"] == uninterrupted["weights"]
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]
    for name, values in uninterrupted["history"].items():
        assert resumed["history"][name] == values[2:]


STOPPING = {"epochs": 6, "early_stopping": 1, "early_stopping_from": 0.5, "early_stopping_min_delta": 0.01,
            "early_stopping_smoothing": 0.5}  # fmt: skip


def test_interrupted_run_with_the_stopping_options_resumes_exactly(recipe_data: Path, tmp_path: Path) -> None:
    """Stopping considered from epoch 4 of 6 only, on a moving average that must rise by more than 0.01:
    a run interrupted after 2 epochs stops at the same epoch with the same weights as one never interrupted."""
    whole = fit_in_subprocess(recipe_data, tmp_path / "whole", **STOPPING)
    fit_in_subprocess(recipe_data, tmp_path / "backup", stop_after=2, **STOPPING)
    resumed = fit_in_subprocess(recipe_data, tmp_path / "backup", **STOPPING)
    assert 4 <= len(whole["history"]["val_accuracy"]) < 6, "stopped early, but not before early_stopping_from"
    assert resumed["weights"] == whole["weights"]
    assert resumed["best_epoch"] == whole["best_epoch"]
    for name, values in whole["history"].items():
        assert resumed["history"][name] == values[2:]
