"""classifier/model/whitening.py: a PCA whitening fitted on the training images, as a fixed layer of the model."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.model.whitening import WHITENING_LAYER, fit_whitening, set_whitening

from conftest import build_tiny_model


def correlated_images(count: int = 600, side: int = 4, seed: int = 0) -> np.ndarray:
    """uint8 images whose pixels move together (a shared brightness), as in real photos."""
    rng = np.random.default_rng(seed)
    brightness = rng.integers(0, 160, (count, 1, 1, 1))
    return (brightness + rng.integers(0, 96, (count, side, side, 3))).astype(np.uint8)


def whiten(images: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return (images.reshape(len(images), -1) / 255.0) @ kernel + bias


def test_whitened_training_images_have_zero_mean_and_unit_uncorrelated_components() -> None:
    images = correlated_images()
    kernel, bias = fit_whitening(images, 20, epsilon=1e-9)
    assert kernel.shape == (48, 20) and bias.shape == (20,) and kernel.dtype == np.float32
    out = whiten(images, kernel, bias)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(out, rowvar=False), np.eye(20), atol=1e-3)


def test_components_come_largest_variance_first_and_epsilon_damps_the_faint_ones() -> None:
    images = correlated_images()
    kernel, bias = fit_whitening(images, 48, epsilon=1e-9)
    damped = whiten(images, *fit_whitening(images, 48, epsilon=0.01)).var(axis=0, ddof=1)
    assert damped[0] > 0.99  # the shared brightness: far more variance than epsilon
    assert np.all(np.diff(damped) <= 1e-6) and damped[-1] < 0.5  # faint components stay below 1
    first = kernel[:, 0] / np.linalg.norm(kernel[:, 0])
    np.testing.assert_allclose(np.abs(first), np.full(48, 48**-0.5), rtol=0.1)  # all pixels alike


def test_the_same_images_give_the_same_bytes_and_a_fixed_sign() -> None:
    images = correlated_images()
    first, second = fit_whitening(images, 10, 0.01), fit_whitening(images.copy(), 10, 0.01)
    assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()
    kernel = first[0]
    assert np.all(kernel[np.abs(kernel).argmax(axis=0), np.arange(10)] > 0)


@pytest.mark.parametrize("components, count", [(0, 600), (49, 600), (5, 1)])
def test_impossible_fits_are_refused(components: int, count: int) -> None:
    with pytest.raises(ValueError):
        fit_whitening(correlated_images(count), components, 0.01)


def test_the_layer_is_fixed_while_the_model_trains() -> None:
    import keras

    from classifier.model.runtime import configure_tensorflow

    configure_tensorflow(seed=3)
    model = build_tiny_model([16], whitening=12)
    labels = np.arange(90) % 3
    images = (correlated_images(90, side=8) // 2 + (labels * 40)[:, None, None, None]).astype(np.uint8)
    set_whitening(model, images, 0.01)
    layer = model.get_layer(WHITENING_LAYER)
    assert not layer.trainable and layer.units == 12
    fitted = [w.copy() for w in layer.get_weights()]
    np.testing.assert_array_equal(fitted[0], fit_whitening(images, 12, 0.01)[0])
    model.fit(images, keras.utils.to_categorical(labels, 3), epochs=2, batch_size=30, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(fitted, layer.get_weights(), strict=True))
