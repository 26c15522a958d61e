"""Test-time augmentation (model.flip_average, model.shift_average): the wrapped model predicts the mean of
the probabilities of the image's views (mirrored, shifted with black fill), exactly, and is saved and
loaded in safe mode like any other model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from classifier.model.saving import load_model, save_model
from classifier.model.view_average import AVERAGE_LAYER, MIRROR_LAYER, unwrapped, with_view_average

from conftest import PROJECT

sys.path.insert(0, str(PROJECT / "benchmarks"))  # view_choice.py, imported by its test


@pytest.fixture(scope="module")
def models() -> tuple:
    """A small MLP, the same MLP wrapped for the flip average and for both averages, on images that are
    not symmetric."""
    from classifier.model.build import build_model
    from classifier.model.runtime import configure_tensorflow

    configure_tensorflow(seed=5)
    model = build_model(8, 3, [16], "relu", normalization="batch", seed=5)
    images = np.random.default_rng(5).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    return model, with_view_average(model, flip=True, shift=0), images, with_view_average(model, True, 2)


def test_the_mirror_reverses_the_width_axis_exactly(models: tuple) -> None:
    import keras

    _, wrapped, images, _ = models
    mirror = keras.Model(wrapped.input, wrapped.get_layer(f"{MIRROR_LAYER}_out").output)
    assert not wrapped.get_layer(MIRROR_LAYER).trainable
    assert np.array_equal(mirror.predict(images, verbose=0), images[:, :, ::-1].astype(np.float32))


def test_the_prediction_is_the_mean_over_the_image_and_its_mirror(models: tuple) -> None:
    model, wrapped, images, _ = models
    plain = model.predict(images, verbose=0)
    mirrored = model.predict(np.ascontiguousarray(images[:, :, ::-1]), verbose=0)
    averaged = wrapped.predict(images, verbose=0)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, rtol=0, atol=1e-7)
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0, atol=1e-6)
    assert not np.allclose(averaged, plain), "the images are not symmetric: the average must differ"
    # The wrapper shares the model's weights and adds none that train.
    assert [id(w) for w in wrapped.trainable_weights] == [id(w) for w in model.trainable_weights]


def test_the_wrapped_model_saves_and_loads_in_safe_mode(models: tuple, tmp_path: Path) -> None:
    _, wrapped, images, _ = models
    save_model(wrapped, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")  # the project's checks, then Keras with safe mode on
    assert loaded.get_layer(AVERAGE_LAYER) is not None
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), wrapped.predict(images, verbose=0))


def shifted(images: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """`images` moved `rows` down and `columns` right, black filling what moves in (numpy's own math)."""
    moved = np.zeros_like(images)
    height, width = images.shape[1:3]
    moved[:, max(rows, 0) : height + min(rows, 0), max(columns, 0) : width + min(columns, 0)] = images[
        :, max(-rows, 0) : height + min(-rows, 0), max(-columns, 0) : width + min(-columns, 0)
    ]
    return moved


def test_the_shift_average_is_the_mean_over_nine_shifted_views_and_their_mirrors(models: tuple) -> None:
    model, _, images, both = models
    views = [shifted(images, rows, columns) for rows in (-2, 0, 2) for columns in (-2, 0, 2)]
    views += [np.ascontiguousarray(view[:, :, ::-1]) for view in views]
    expected = np.mean([model.predict(view, verbose=0) for view in views], axis=0)
    np.testing.assert_allclose(both.predict(images, verbose=0), expected, rtol=0, atol=1e-6)
    # A view really is the image moved two pixels with a black border, not a wrapped-around copy.
    assert shifted(images, 2, 0)[:, :2].max() == 0 and np.array_equal(
        shifted(images, 2, 0)[:, 2:], images[:, :-2]
    )
    assert [id(w) for w in both.trainable_weights] == [id(w) for w in model.trainable_weights]


def test_with_neither_average_the_model_is_saved_as_it_is(models: tuple) -> None:
    model = models[0]
    assert with_view_average(model, flip=False, shift=0) is model


def test_the_model_with_both_averages_saves_and_loads_in_safe_mode(models: tuple, tmp_path: Path) -> None:
    _, _, images, both = models
    save_model(both, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), both.predict(images, verbose=0))


def test_the_view_choice_benchmark_scores_each_shift_with_the_train_stages_wrapper(
    models: tuple, tmp_path: Path
) -> None:
    """benchmarks/view_choice.py unwraps a saved model and scores it as the train stage would wrap it."""
    import keras
    import view_choice  # benchmarks/view_choice.py (on sys.path above)

    from classifier.data.splits import save_split

    model, wrapped, images, both = models
    labels = np.arange(len(images)) % 3
    save_split(tmp_path / "validation.npz", images, labels)
    save_split(tmp_path / "test.npz", images[::-1].copy(), labels)
    save_model(wrapped, tmp_path / "model.keras")
    assert unwrapped(load_model(tmp_path / "model.keras")).name == model.name and unwrapped(model) is model
    # A model saved by commit 7011b51 or before: the flip average under its former name.
    image = keras.Input(model.input_shape[1:], dtype="uint8")
    former = keras.Model(image, keras.layers.Average(name="flip_average")([model(image), model(image)]))
    assert unwrapped(former) is model
    result = view_choice.scores(tmp_path / "model.keras", tmp_path, [0, 2], flip=True)
    for shift, views in ((0, wrapped), (2, both)):
        for split, order in (("validation", slice(None)), ("test", slice(None, None, -1))):
            predicted = views.predict(images[order], verbose=0).argmax(axis=1)
            assert result[shift][split] == np.mean(predicted == labels)
