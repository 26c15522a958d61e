"""Augmentation of training batches: random shifts and mirroring, and MixUp; stateless and seeded."""

from __future__ import annotations

from typing import Any

from classifier.core.params_schema import AugmentParams


def augment_batch(images: Any, key: Any, crop_padding: int, flip: bool) -> Any:
    """A randomly shifted and mirrored copy of a batch of uint8 images (batch, height, width, channels).

    Shift: pad every side with `crop_padding` black pixels, then crop back to the original size at a
    random offset. Mirror: left-right, each image with probability 1/2. The randomness is stateless,
    drawn from `key` (two integers) alone: the same key always gives the same batch.
    """
    import tensorflow as tf

    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    count, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    if crop_padding:
        padding = [[0, 0], [crop_padding, crop_padding], [crop_padding, crop_padding], [0, 0]]
        padded = tf.pad(images, padding)
        corner = tf.random.stateless_uniform(
            [count, 2], crop_key, minval=0, maxval=2 * crop_padding + 1, dtype=tf.int32
        )
        rows = corner[:, :1] + tf.range(height)  # each image's own window of rows, then of columns
        columns = corner[:, 1:] + tf.range(width)
        images = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)
    if flip:
        mirrored = tf.random.stateless_uniform([count], flip_key) < 0.5
        images = tf.where(mirrored[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images


def mix_batch(images: Any, targets: Any, key: Any, alpha: float) -> Any:
    """MixUp: each image and its one-hot target blended with those of its mirror in the batch (row i with row
    n-1-i), weights lam and 1 - lam with lam ~ Beta(alpha, alpha) drawn per image from `key` alone.

    The blend is rounded back to uint8, the model's input (an error of at most 1/510 of the pixel range);
    the targets are blended exactly, so the loss sees the true mixture."""
    import tensorflow as tf

    count = tf.shape(images)[0]
    first, second = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    # Beta(a, a) = X / (X + Y) for X, Y ~ Gamma(a): TensorFlow has a stateless gamma, not a stateless beta.
    x = tf.random.stateless_gamma([count], first, alpha=alpha)
    y = tf.random.stateless_gamma([count], second, alpha=alpha)
    lam = x / (x + y)
    partner_images, partner_targets = tf.reverse(images, axis=[0]), tf.reverse(targets, axis=[0])
    weight = lam[:, None, None, None]
    blended = weight * tf.cast(images, tf.float32) + (1 - weight) * tf.cast(partner_images, tf.float32)
    mixed_images = tf.cast(tf.round(blended), images.dtype)
    mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * partner_targets
    return mixed_images, mixed_targets


def augmenter(augment: AugmentParams, seed: int, epoch: Any) -> Any:
    """The `train.augment` params as a function of (images, targets, batch number) that returns the
    augmented (images, targets), or None when they are all off.

    Batch b of epoch e is augmented with a key made from (seed, e, b) only, so a resumed run augments
    exactly as an uninterrupted one.
    """
    if not augment.flip and not augment.crop_padding and not augment.mixup:
        return None
    import tensorflow as tf

    def apply(images: Any, targets: Any, batch: Any) -> Any:
        key = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), epoch]), batch)
        if augment.flip or augment.crop_padding:
            images = augment_batch(images, key, augment.crop_padding, augment.flip)
        if augment.mixup:
            # A key of its own, so that turning MixUp on leaves the shifts and mirrors as they were.
            images, targets = mix_batch(
                images, targets, tf.random.experimental.stateless_fold_in(key, 1), augment.mixup
            )
        return images, targets

    return apply
