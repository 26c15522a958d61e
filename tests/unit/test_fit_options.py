"""The training job with the options beyond the recipe (schedule, early stopping, augmentation and MixUp,
dropout), in
process on tiny data: identical run to run, validation unaugmented, resumed exactly after a kill."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml

from classifier.core.params import validate_params
from classifier.data.splits import load_split
from classifier.model.saving import save_model
from classifier.training.backup import Backup

from conftest import PROJECT, write_tiny_splits

TRAIN = {
    "batch_size": 16, "epochs": 4, "threads": 1, "steps_per_execution": 2, "jit_compile": True,
    "distribution": "single", "lr_schedule": "cosine", "warmup_epochs": 1, "early_stopping": 3,
    "early_stopping_from": 0.0, "early_stopping_min_delta": 0.0, "early_stopping_smoothing": 0.0, "keep_best": False,
    "augment": {"flip": True, "crop_padding": 2, "mixup": 0.4},
}  # fmt: skip


class Killed(Exception):
    """The job stopped right after a backup, as a kill would stop it."""


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny splits and a compiled model using every new model param."""
    from classifier.model.build import build_model, compile_model
    from classifier.model.runtime import configure_tensorflow

    folder = write_tiny_splits(tmp_path_factory.mktemp("recipe"), seed=2)
    configure_tensorflow(seed=7)
    model = build_model(32, 3, [32, 32], "relu", normalization="batch", dropout=0.2, residual=True, seed=7)
    compile_model(model, "adamw", 0.003, "categorical_crossentropy", weight_decay=0.01, label_smoothing=0.1)
    save_model(model, folder / "compiled.keras")
    return folder


@contextlib.contextmanager
def killed_after_backup(epoch: int):
    """The job dies once the backup of `epoch` is written, like the train stage killed at that moment."""
    save = Backup.save

    def save_then_die(self: Backup, model: object, done: int, *args: object, **kwargs: object) -> None:
        save(self, model, done, *args, **kwargs)
        if done == epoch:
            raise Killed

    with mock.patch.object(Backup, "save", save_then_die), pytest.raises(Killed):
        yield


def train_in_process(
    data: Path, run: Path, stop_after: int = 0, view_average: bool = False, **train: object
) -> dict:
    """The training job with seed 7 in `run` (its backups, DVCLive folder and model); `stop_after` kills it
    after that epoch's backup. The trained weights' hash, this call's history, the best epoch (0-based),
    the kept model's scores on the raw validation images and its final learning rate (with `view_average`,
    model.flip_average and model.shift_average on: of the trained model inside the saved one)."""
    from classifier.training.job import train_model

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["seed"] = 7
    params["train"] = {**TRAIN, **train}
    params["model"].update(flip_average=view_average, shift_average=1 if view_average else 0)
    run.mkdir(parents=True, exist_ok=True)
    job = (
        data / "compiled.keras",
        data,
        run / "model.keras",
        run / "metrics",
        validate_params(params),
        None,
        run / "backup",
    )
    with contextlib.chdir(run):  # DVCLive looks for a DVC repo in the working folder
        if stop_after:
            with killed_after_backup(stop_after):
                train_model(*job)
            return {}
        trained = train_model(*job)
    model, (images, labels) = trained.model, load_split(data / "validation.npz")
    if view_average:
        model = model.get_layer("mlp")
    targets = np.eye(3, dtype=np.float32)[labels]
    unaugmented = model.evaluate(images, targets, batch_size=16, verbose=0, return_dict=True)
    return {
        "weights": hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.weights)).hexdigest(),
        "history": trained.history,
        "best_epoch": json.loads((run / "metrics" / "best.json").read_text())["best"]["epoch"] - 1,
        "unaugmented": unaugmented,
        "learning_rate": float(model.optimizer.learning_rate),
    }


@pytest.fixture(scope="module")
def uninterrupted(recipe_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = tmp_path_factory.mktemp("uninterrupted")
    return {**train_in_process(recipe_data, run), "run": run}


def test_every_new_param_trains_identically_run_to_run_and_view_averages_only_wrap_the_saved_model(
    recipe_data: Path, uninterrupted: dict, tmp_path: Path
) -> None:
    """The same run again, with model.flip_average and model.shift_average on: test-time augmentation
    changes what the saved model predicts, never how it trains or validates."""
    from classifier.model.saving import load_model
    from classifier.model.view_average import AVERAGE_LAYER

    again = train_in_process(recipe_data, tmp_path, view_average=True)
    assert again["weights"] == uninterrupted["weights"]
    assert again["history"] == uninterrupted["history"]
    wrapped = [layer.name for layer in load_model(tmp_path / "model.keras").layers]
    plain = [layer.name for layer in load_model(uninterrupted["run"] / "model.keras").layers]
    assert AVERAGE_LAYER in wrapped and "mlp" in wrapped and AVERAGE_LAYER not in plain


def test_validation_sees_the_images_unaugmented(uninterrupted: dict) -> None:
    """The best epoch's validation loss and accuracy, logged during training, are what the kept model
    scores on the raw validation images: validation batches were never flipped or shifted."""
    history = uninterrupted["history"]
    best = uninterrupted["best_epoch"]
    assert uninterrupted["unaugmented"]["loss"] == pytest.approx(history["val_loss"][best], rel=1e-5)
    assert uninterrupted["unaugmented"]["accuracy"] == pytest.approx(history["val_accuracy"][best])
    assert uninterrupted["learning_rate"] == pytest.approx(0.0, abs=1e-9), (
        "cosine decays to 0 at the last step"
    )


def test_augmentation_changes_training(recipe_data: Path, uninterrupted: dict, tmp_path: Path) -> None:
    plain = train_in_process(recipe_data, tmp_path, augment={"flip": False, "crop_padding": 0, "mixup": 0.0})
    assert plain["weights"] != uninterrupted["weights"]


def test_interrupted_run_resumes_exactly(recipe_data: Path, uninterrupted: dict, tmp_path: Path) -> None:
    """Dropout, batch norm, augmentation, the schedule and early stopping all continue where they were."""
    train_in_process(recipe_data, tmp_path, stop_after=2)
    resumed = train_in_process(recipe_data, tmp_path)
    assert resumed["weights"] == uninterrupted["weights"]
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]
    for name, values in uninterrupted["history"].items():
        assert resumed["history"][name] == values[2:]


STOPPING = {"epochs": 6, "early_stopping": 1, "early_stopping_from": 0.5, "early_stopping_min_delta": 0.01,
            "early_stopping_smoothing": 0.5}  # fmt: skip


def test_interrupted_run_with_the_stopping_options_resumes_exactly(recipe_data: Path, tmp_path: Path) -> None:
    """Stopping considered from epoch 4 of 6 only, on a moving average that must rise by more than 0.01:
    a run interrupted after 2 epochs stops at the same epoch with the same weights as one never interrupted."""
    whole = train_in_process(recipe_data, tmp_path / "whole", **STOPPING)
    train_in_process(recipe_data, tmp_path / "resumed", stop_after=2, **STOPPING)
    resumed = train_in_process(recipe_data, tmp_path / "resumed", **STOPPING)
    assert 4 <= len(whole["history"]["val_accuracy"]) < 6, "stopped early, but not before early_stopping_from"
    assert resumed["weights"] == whole["weights"]
    assert resumed["best_epoch"] == whole["best_epoch"]
    for name, values in whole["history"].items():
        assert resumed["history"][name] == values[2:]
