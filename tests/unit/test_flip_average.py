"""Flip test-time augmentation (model.flip_average): the wrapped model predicts the mean of the image's and
its mirror image's probabilities, exactly, and is saved and loaded in safe mode like any other model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from classifier.model.flip_average import AVERAGE_LAYER, MIRROR_LAYER, with_flip_average
from classifier.model.saving import load_model, save_model


@pytest.fixture(scope="module")
def models() -> tuple:
    """A small MLP and the same MLP wrapped, on images that are not symmetric."""
    from classifier.model.build import build_model
    from classifier.model.runtime import configure_tensorflow

    configure_tensorflow(seed=5)
    model = build_model(8, 3, [16], "relu", normalization="batch", seed=5)
    images = np.random.default_rng(5).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    return model, with_flip_average(model), images


def test_the_mirror_reverses_the_width_axis_exactly(models: tuple) -> None:
    import keras

    _, wrapped, images = models
    mirror = keras.Model(wrapped.input, wrapped.get_layer("channels_last").output)
    assert not wrapped.get_layer(MIRROR_LAYER).trainable
    assert np.array_equal(mirror.predict(images, verbose=0), images[:, :, ::-1].astype(np.float32))


def test_the_prediction_is_the_mean_over_the_image_and_its_mirror(models: tuple) -> None:
    model, wrapped, images = models
    plain = model.predict(images, verbose=0)
    mirrored = model.predict(np.ascontiguousarray(images[:, :, ::-1]), verbose=0)
    averaged = wrapped.predict(images, verbose=0)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, rtol=0, atol=1e-7)
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0, atol=1e-6)
    assert not np.allclose(averaged, plain), "the images are not symmetric: the average must differ"
    # The wrapper shares the model's weights and adds none that train.
    assert [id(w) for w in wrapped.trainable_weights] == [id(w) for w in model.trainable_weights]


def test_the_wrapped_model_saves_and_loads_in_safe_mode(models: tuple, tmp_path: Path) -> None:
    _, wrapped, images = models
    save_model(wrapped, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")  # the project's checks, then Keras with safe mode on
    assert loaded.get_layer(AVERAGE_LAYER) is not None
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), wrapped.predict(images, verbose=0))
