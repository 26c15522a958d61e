"""classifier/training/augment.py: mirroring and shifting training batches, from a key alone."""

from __future__ import annotations

import numpy as np


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
    from classifier.core.params_schema import AugmentParams
    from classifier.training.augment import augmenter

    assert augmenter(AugmentParams(flip=False, crop_padding=0), 1, None) is None
