"""classifier/training/augment.py: mirroring, shifting and mixing training batches, from a key alone."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.core.params_schema import AugmentParams


def batch(count: int = 16, side: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(
        1, 256, (count, side, side, 3), dtype=np.uint8
    )  # no black pixels


def augmented(images: np.ndarray, key: tuple[int, int], crop_padding: int, flip: bool) -> np.ndarray:
    import tensorflow as tf

    from classifier.training.augment import augment_batch

    return augment_batch(tf.constant(images), tf.constant(key, tf.int64), crop_padding, flip).numpy()


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
        windows = [
            (r, c)
            for r in range(2 * padding + 1)
            for c in range(2 * padding + 1)
            if np.array_equal(o, p[r : r + 8, c : c + 8])
        ]
        assert windows, "every output is one window of its padded image"
        shifts.add(windows[0])
    assert len(shifts) > 5, "offsets vary between images"


def test_augmentation_depends_only_on_its_key() -> None:
    images = batch()
    a = augmented(images, (5, 9), 4, True)
    assert np.array_equal(a, augmented(images, (5, 9), 4, True))
    assert not np.array_equal(a, augmented(images, (5, 10), 4, True))


def test_augmentation_off_builds_no_augmenter() -> None:
    from classifier.training.augment import augmenter

    assert augmenter(AugmentParams(flip=False, crop_padding=0, mixup=0.0), 1, None) is None


def mixed(
    images: np.ndarray, targets: np.ndarray, key: tuple[int, int], alpha: float
) -> tuple[np.ndarray, ...]:
    import tensorflow as tf

    from classifier.training.augment import mix_batch

    out = mix_batch(tf.constant(images), tf.constant(targets), tf.constant(key, tf.int64), alpha)
    return tuple(tensor.numpy() for tensor in out)


def test_mixup_blends_each_image_and_target_with_its_mirror_in_the_batch() -> None:
    images = batch()
    targets = np.eye(16, dtype=np.float32)  # one class per image: a target row shows both weights
    out_images, out_targets = mixed(images, targets, (3, 4), 0.4)
    assert out_images.dtype == np.uint8 and out_targets.dtype == np.float32
    np.testing.assert_allclose(out_targets.sum(axis=1), 1, rtol=1e-6)
    lam = out_targets[np.arange(16), np.arange(16)]  # the weight of the image's own class
    assert np.all(out_targets[np.arange(16), 15 - np.arange(16)] == pytest.approx(1 - lam))
    expected = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[::-1]
    assert np.abs(out_images - expected).max() <= 0.5 + 1e-3  # rounded back to uint8
    assert 0.2 < lam.std() and np.all((0 <= lam) & (lam <= 1))  # drawn per image, Beta(0.4, 0.4): far apart


def test_mixup_depends_only_on_its_key() -> None:
    images, targets = batch(), np.eye(16, dtype=np.float32)
    a = mixed(images, targets, (5, 9), 0.4)
    assert all(np.array_equal(x, y) for x, y in zip(a, mixed(images, targets, (5, 9), 0.4), strict=True))
    assert not np.array_equal(a[1], mixed(images, targets, (5, 10), 0.4)[1])


def test_mixup_leaves_the_shifts_and_mirrors_as_they_were() -> None:
    """Turning MixUp on adds a blend; the shifted and mirrored images under it are those drawn without it."""
    import tensorflow as tf

    from classifier.training.augment import augmenter

    images = tf.constant(batch())
    targets = tf.constant(np.eye(16, dtype=np.float32))
    epoch, number = tf.constant(2, tf.int64), tf.constant(5, tf.int64)
    plain = augmenter(AugmentParams(flip=True, crop_padding=2, mixup=0.0), 1, epoch)(images, targets, number)
    blended = augmenter(AugmentParams(flip=True, crop_padding=2, mixup=1.0), 1, epoch)(
        images, targets, number
    )
    assert np.array_equal(plain[1], targets)  # off: targets untouched
    lam = blended[1].numpy()[np.arange(16), np.arange(16)]
    expected = (
        lam[:, None, None, None] * plain[0].numpy() + (1 - lam[:, None, None, None]) * plain[0].numpy()[::-1]
    )
    assert np.abs(blended[0].numpy() - expected).max() <= 0.5 + 1e-3
