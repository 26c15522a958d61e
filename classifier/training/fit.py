"""The training loop: Keras model.fit on one device, our own loop under tf.distribute."""

from __future__ import annotations

from typing import Any

import numpy as np

from classifier.compat import force_jit_compile
from classifier.core.params_schema import TrainParams
from classifier.training import distribute
from classifier.training.augment import augmenter
from classifier.training.batches import epoch_counter, gather, index_batches, to_targets
from classifier.training.callbacks import memory_release


def use_xla(model: Any, requested: bool) -> bool:
    """XLA where we verified it is deterministic and faster: CPU only, no distribution strategy."""
    import tensorflow as tf

    distributed = (
        tf.distribute.has_strategy() or model.distribute_strategy is not tf.distribute.get_strategy()
    )
    if requested and (distributed or tf.config.list_physical_devices("GPU")):
        print("train: jit_compile applies to single-device CPU training only; running without XLA")
        return False
    return requested


def fit(
    model: Any,
    train_split: tuple[Any, np.ndarray],
    validation_split: tuple[Any, np.ndarray],
    train: TrainParams,
    seed: int,
    callbacks: list[Any],
    verbose: int | str = "auto",
    strategy: Any = None,
    initial_epoch: int = 0,
) -> Any:
    """Train `model` in place on (images, labels) splits with the `train:` params; returns the History.

    Starts after `initial_epoch` completed epochs. The optimizer's learning-rate schedule is set before,
    once (classifier/training/job.py does it before loading a backup). Under a tf.distribute `strategy` (the model made in its
    scope) each replica trains on its slice of every batch; without one, Keras' model.fit does the work.
    """
    num_classes = model.output_shape[-1]
    train_images, train_targets = train_split[0], to_targets(train_split[1], num_classes, model.loss)
    validation_images = validation_split[0]
    validation_targets = to_targets(validation_split[1], num_classes, model.loss)
    replicas = distribute.replicas(strategy)
    epoch, set_epoch = epoch_counter()
    callbacks = [set_epoch, *callbacks, memory_release(train.steps_per_execution)]
    augmentation = augmenter(train.augment, seed, epoch)

    def train_batches() -> Any:
        return index_batches(len(train_targets), train.batch_size, replicas, seed, epoch)

    def validation_batches() -> Any:
        return index_batches(len(validation_targets), train.batch_size, replicas)

    if strategy is not None:
        if train.jit_compile or train.steps_per_execution > 1:
            print("train: jit_compile and steps_per_execution apply to single-process training only")
        return distribute.fit(
            model,
            strategy,
            distribute.distribute_batches(
                strategy, train_batches, lambda rows: gather(rows, train_images, train_targets, augmentation)
            ),
            distribute.distribute_batches(
                strategy, validation_batches, lambda rows: gather(rows, validation_images, validation_targets)
            ),
            train.epochs,
            initial_epoch,
            callbacks,
            example=(train_images[:1], train_targets[:1]),
        )
    # Execution knobs, not part of the saved model: they change speed (XLA also the rounding), not the math.
    # Keras' public setter refuses XLA whenever TF op determinism is on (classifier/compat.py).
    force_jit_compile(model, use_xla(model, train.jit_compile))
    model.steps_per_execution = train.steps_per_execution
    return model.fit(
        gather(train_batches(), train_images, train_targets, augmentation),
        validation_data=gather(validation_batches(), validation_images, validation_targets),
        epochs=train.epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # index_batches() shuffles the training set every epoch itself
        callbacks=callbacks,
        verbose=verbose,
    )
