"""The params beyond the classic recipe (README, "A better recipe"), each on tiny data: model shapes,
weight decay and label smoothing, the learning-rate schedule, early stopping, and augmentation (training
batches only, deterministic, resumed exactly)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classifier.errors import StageError
from classifier.model_files import load_model, save_model
from classifier.runtime import configure_tensorflow
from tests.conftest import PROJECT, tool_env, write_tiny_splits


@pytest.fixture(scope="module", autouse=True)
def seeded() -> None:
    configure_tensorflow(seed=3)


def build(hidden_units: list[int], **options):
    from classifier.model import build_model, compile_model

    model = build_model(8, 3, hidden_units, "relu", **options)
    compile_model(model, "adam", 0.001, "categorical_crossentropy")
    return model


def layer_types(model) -> list[str]:
    return [layer.__class__.__name__ for layer in model.layers]


# --- model: normalization, dropout, residual ---------------------------------------------------------------


@pytest.mark.parametrize(
    "normalization, norm_layer", [("none", None), ("batch", "BatchNormalization"), ("layer", "LayerNormalization")]
)
def test_normalization_follows_each_hidden_layer(normalization: str, norm_layer: str | None) -> None:
    model = build([16, 16], normalization=normalization)
    types = layer_types(model)
    assert types.count("Dense") == 3
    assert model.output_shape == (None, 3)
    if norm_layer is None:
        assert "BatchNormalization" not in types and "LayerNormalization" not in types
        assert all(layer.use_bias for layer in model.layers if layer.__class__.__name__ == "Dense")
    else:
        assert types.count(norm_layer) == 2
        # Dense -> norm -> activation, per hidden layer; the norm's shift replaces the Dense bias.
        first = types.index("Dense")
        assert types[first : first + 3] == ["Dense", norm_layer, "Activation"]
        assert not model.get_layer("hidden_1").use_bias


def test_residual_connects_only_layers_as_wide_as_their_input() -> None:
    model = build([32, 32, 16, 16], residual=True)
    adds = [layer.name for layer in model.layers if layer.__class__.__name__ == "Add"]
    # hidden_1's input is the 192-wide image; hidden_3 narrows 32 -> 16.
    assert adds == ["hidden_2_residual", "hidden_4_residual"]
    assert not [layer for layer in build([32, 32]).layers if layer.__class__.__name__ == "Add"]


def test_residual_block_adds_its_input() -> None:
    """With hidden_2's kernel and bias at zero, its ReLU outputs 0, so the block passes its input through."""
    model = build([16, 16], residual=True)
    hidden_2 = model.get_layer("hidden_2")
    hidden_2.set_weights([np.zeros_like(w) for w in hidden_2.get_weights()])
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    import keras

    block_input = keras.Model(model.input, model.get_layer("hidden_1").output)(images)
    block_output = keras.Model(model.input, model.get_layer("hidden_2_residual").output)(images)
    np.testing.assert_array_equal(np.asarray(block_output), np.asarray(block_input))


def test_dropout_is_active_in_training_only() -> None:
    model = build([64], dropout=0.5, seed=1)
    assert model.get_layer("hidden_1_dropout").rate == 0.5
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(model(images)))
    assert not np.array_equal(np.asarray(model(images, training=True)), np.asarray(model(images)))
    assert "Dropout" not in layer_types(build([64]))


def build_everything(seed: int):
    import keras

    from classifier.model import build_model, compile_model

    keras.backend.clear_session()  # as in a fresh process: layer and optimizer names count from 0 again
    configure_tensorflow(seed=seed)
    model = build_model(8, 3, [16, 16], "relu", normalization="batch", dropout=0.25, residual=True, seed=seed)
    compile_model(model, "adamw", 0.002, "categorical_crossentropy", weight_decay=0.05, label_smoothing=0.1)
    return model


def test_new_options_survive_save_and_load_and_save_byte_identically(tmp_path: Path) -> None:
    model = build_everything(5)
    save_model(model, tmp_path / "a.keras")
    loaded = load_model(tmp_path / "a.keras")
    assert layer_types(loaded) == layer_types(model)
    assert loaded.optimizer.weight_decay == pytest.approx(0.05)
    assert loaded.loss.label_smoothing == pytest.approx(0.1)
    assert loaded.get_layer("hidden_2_dropout").seed == 7  # the params seed + the layer's number
    save_model(build_everything(5), tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()


# --- compile: weight decay and label smoothing ---------------------------------------------------------------


def test_weight_decay_shrinks_weights_apart_from_the_gradient() -> None:
    """A zero loss gives zero gradients: only the decoupled decay moves the weights, by lr * decay."""
    import keras

    from classifier.model import build_model, compile_model

    model = build_model(8, 3, [4], "relu")
    compile_model(model, "adam", 0.1, "categorical_crossentropy", weight_decay=0.5)
    kernel = model.get_layer("hidden_1").kernel
    before = np.asarray(kernel).copy()
    model.optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
    np.testing.assert_allclose(np.asarray(kernel), before * (1 - 0.1 * 0.5), rtol=1e-5)


def test_label_smoothing_softens_the_targets() -> None:
    from classifier.model import compile_model

    model = build([4])
    compile_model(model, "adam", 0.001, "categorical_crossentropy", label_smoothing=0.3)
    one_hot = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    confident = np.array([[0.0001, 0.9998, 0.0001]], dtype=np.float32)
    smoothed = float(model.loss(one_hot, confident))
    # Against (1 - 0.3) * one-hot + 0.3 / 3 the confident prediction is penalised, not rewarded.
    expected = -(0.8 * np.log(0.9998) + 2 * 0.1 * np.log(0.0001))
    assert smoothed == pytest.approx(expected, rel=1e-3)


# --- learning-rate schedule -----------------------------------------------------------------------------------


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    from classifier.schedules import learning_rate_schedule

    schedule = learning_rate_schedule(0.01, epochs=10, steps_per_epoch=100, warmup_epochs=2)
    rates = [float(schedule(step)) for step in range(0, 1001, 50)]
    assert rates[0] == 0.0
    assert float(schedule(100)) == pytest.approx(0.005)  # halfway through the warm-up
    assert float(schedule(200)) == pytest.approx(0.01)  # the peak, when warm-up ends
    assert float(schedule(600)) == pytest.approx(0.005)  # halfway through the decay
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-9)
    peak = rates.index(max(rates))
    assert rates[: peak + 1] == sorted(rates[: peak + 1]) and rates[peak:] == sorted(rates[peak:], reverse=True)
    no_warmup = learning_rate_schedule(0.01, epochs=10, steps_per_epoch=100, warmup_epochs=0)
    assert float(no_warmup(0)) == pytest.approx(0.01)


# --- early stopping -------------------------------------------------------------------------------------------


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


# --- augmentation ---------------------------------------------------------------------------------------------


def batch(count: int = 16, side: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 256, (count, side, side, 3), dtype=np.uint8)  # no black pixels


def augmented(images: np.ndarray, key: tuple[int, int], crop_padding: int, flip: bool) -> np.ndarray:
    import tensorflow as tf

    from classifier.augment import augment

    return augment(tf.constant(images), tf.constant(key, tf.int64), crop_padding, flip).numpy()


def test_flip_mirrors_about_half_the_images_and_nothing_else() -> None:
    images = batch(64)
    out = augmented(images, (1, 2), 0, True)
    assert out.shape == images.shape and out.dtype == np.uint8
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 16 <= sum(mirrored) <= 48


def test_crop_is_a_shifted_window_of_the_padded_image() -> None:
    images = batch(32)
    padding = 2
    out = augmented(images, (1, 2), padding, False)
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
    shifts = set()
    for o, p in zip(out, padded):
        windows = [(r, c) for r in range(2 * padding + 1) for c in range(2 * padding + 1)
                   if np.array_equal(o, p[r : r + 8, c : c + 8])]
        assert windows, "every output is one window of its padded image"
        shifts.add(windows[0])
    assert len(shifts) > 5, "offsets vary between images"


def test_augmentation_depends_only_on_its_key() -> None:
    images = batch()
    a = augmented(images, (5, 9), 4, True)
    assert np.array_equal(a, augmented(images, (5, 9), 4, True))
    assert not np.array_equal(a, augmented(images, (5, 10), 4, True))


def test_augmentation_off_builds_no_augmenter() -> None:
    from classifier.augment import augmenter

    assert augmenter({"flip": False, "crop_padding": 0}, 1, None) is None


FIT_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
import keras
import numpy as np
from classifier.backup import Backup
from classifier.batches import load_images
from classifier.callbacks import callback_state, early_stopping, restore_callback_state
from classifier.fit import fit
from classifier.model_files import load_model
from classifier.runtime import configure_tensorflow
from classifier.schedules import use_learning_rate_schedule

data, settings, stop_after = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
configure_tensorflow(seed=7, threads=1)
model = load_model(data / "compiled.keras")
train, validation = load_images(data / "train.npz"), load_images(data / "validation.npz")
backup = Backup(Path(sys.argv[4]), "run")
stopper = early_stopping(settings["early_stopping"])
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
    "augment": {"flip": True, "crop_padding": 2},
}  # fmt: skip


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny splits and a compiled model using every new model param."""
    from classifier.model import build_model, compile_model

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


# --- params ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": {"label_smoothing": 0.1, "loss": "sparse_categorical_crossentropy"}}, "model.label_smoothing = 0.1 needs model.loss: categorical_crossentropy"),
        ({"train": {"warmup_epochs": 2}}, "train.warmup_epochs = 2 needs train.lr_schedule: cosine"),
        ({"train": {"warmup_epochs": 50, "lr_schedule": "cosine"}}, "train.warmup_epochs = 50 must be less than train.epochs = 50"),
    ],
)  # fmt: skip
def test_params_that_do_not_go_together_are_refused(overrides: dict, message: str) -> None:
    import yaml

    from classifier.params import check_combinations, validate_params

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for group, values in overrides.items():
        params[group].update(values)
    validate_params(params)
    with pytest.raises(StageError, match=message.replace(".", r"\.")):
        check_combinations(params)
