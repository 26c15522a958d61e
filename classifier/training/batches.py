"""The training and validation batches: row numbers through tf.data, images gathered in TensorFlow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from classifier.data.splits import load_split


def to_targets(labels: np.ndarray, num_classes: int, loss: Any) -> np.ndarray:
    """Integer labels for sparse losses, one-hot rows for categorical_crossentropy (the recipe)."""
    if isinstance(loss, str) and loss.startswith("sparse_"):
        return labels
    return np.eye(num_classes, dtype=np.float32)[labels]


def load_images(path: Path) -> tuple[Any, np.ndarray]:
    """Read a split as (uint8 image tensor, integer labels); scaling to [0, 1] is a layer of the model."""
    import tensorflow as tf

    images, labels = load_split(path)
    with tf.device("/cpu:0"):  # tf.data gathers the batches on the CPU, also when training on a GPU
        # DLPack hands load_split's aligned buffer to TensorFlow as is: tf.constant would copy it (twice).
        return tf.experimental.dlpack.from_dlpack(images.__dlpack__()), labels


def batch_count(size: int, batch_size: int, replicas: int = 1) -> int:
    """Batches per epoch: a last batch with fewer rows than replicas is left out (see index_batches)."""
    return size // batch_size + (size % batch_size >= replicas)


def index_batches(
    size: int, batch_size: int, replicas: int = 1, seed: int | None = None, epoch: Any = None
) -> Any:
    """Batches of row numbers 0 ... size-1, in a fresh order every epoch when a seed is given.

    The order depends only on (seed, epoch), `epoch` being the variable `epoch_counter` sets: a run resumed
    at epoch 7 sees the batches an uninterrupted run sees. A last batch with fewer rows than replicas is
    left out, as every replica needs at least one row.
    """
    import tensorflow as tf

    def one_epoch(_: Any) -> Any:
        rows = tf.range(size, dtype=tf.int64)
        if seed is not None:
            key = tf.stack([tf.constant(seed, tf.int64), epoch])
            rows = tf.random.experimental.stateless_shuffle(rows, seed=key)
        return tf.data.Dataset.from_tensor_slices(rows).batch(batch_size)

    count = batch_count(size, batch_size, replicas)
    # Built when each epoch starts, so it reads that epoch's number. A known length lets Keras stop after
    # the last batch, not run into the end of the data (which costs an extra optimizer step).
    dataset = tf.data.Dataset.from_tensors(0).flat_map(one_epoch).take(count)
    return dataset.apply(tf.data.experimental.assert_cardinality(count))


def gather(indices: Any, images: Any, targets: np.ndarray, augmentation: Any = None) -> Any:
    """(images, targets) batches for batches of row numbers: only the numbers flow through tf.data, each
    batch is gathered from the in-memory tensors (and augmented, for training, by `augmentation`)."""
    import tensorflow as tf

    with tf.device("/cpu:0"):  # next to the images: tf.data gathers on the CPU
        targets = tf.constant(targets)
    if augmentation is None:
        dataset = indices.map(lambda i: (tf.gather(images, i), tf.gather(targets, i)))
    else:
        numbered = indices.enumerate()  # counts from 0 in every epoch: the dataset is rebuilt each time
        dataset = numbered.map(lambda b, i: augmentation(tf.gather(images, i), tf.gather(targets, i), b))
    options = tf.data.Options()
    # tf.data's graph rewrites serialise the dataset, which would copy the captured images once more.
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.with_options(options)


def epoch_counter() -> tuple[Any, Any]:
    """A variable holding the number of the epoch being trained, and the Keras callback that sets it."""
    import keras
    import tensorflow as tf

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    return epoch, keras.callbacks.LambdaCallback(on_epoch_begin=lambda number, logs: epoch.assign(number))
