"""Stage 4: fit the compiled model on the prepared data, logging every epoch with DVCLive.

Same math as the classic `model.fit(x, y, batch_size=32)`: a fresh shuffle every epoch, one optimizer update
per batch of `train.batch_size`, validation after every epoch. What makes it fast on a CPU (see README,
"Performance"): the uint8 images stay in memory as one tensor and batches are gathered inside TensorFlow
(no float32 copy of the dataset, no Python per batch), many batches run per call into TensorFlow
(`train.steps_per_execution`) and each training step is compiled by XLA (`train.jit_compile`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import configure_tensorflow, load_model, load_params, load_split, run, save_model

# oneDNN's allocator keeps every freed block in its own pool; the system allocator gives large blocks back
# (~240 MB less peak memory on CIFAR-10). Read when TensorFlow loads: set before anything imports it.
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
# Images become a tensor in slices of this many bytes: converting a whole array at once briefly holds three
# copies of it, and slices above glibc's 32 MB mmap threshold return to the system once joined.
CONVERT_SLICE_BYTES = 64 << 20


def to_targets(labels: np.ndarray, num_classes: int, loss: str) -> np.ndarray:
    """Integer labels for sparse losses, one-hot rows for categorical_crossentropy (the recipe)."""
    if loss.startswith("sparse_"):
        return labels
    return np.eye(num_classes, dtype=np.float32)[labels]


def load_images(path: Path) -> tuple[Any, np.ndarray]:
    """Read a split as (uint8 image tensor, integer labels); scaling to [0, 1] is a layer of the model."""
    import tensorflow as tf

    images, labels = load_split(path)
    step = max(1, CONVERT_SLICE_BYTES // max(1, images[0].nbytes))
    with tf.device("/cpu:0"):  # tf.data gathers the batches on the CPU, also when training on a GPU
        slices = [tf.identity(images[i : i + step]) for i in range(0, len(images), step)]
        del images  # free the numpy copy before the slices are joined
        return tf.concat(slices, axis=0), labels


def batches(images: Any, targets: np.ndarray, batch_size: int, shuffle_seed: int | None = None) -> Any:
    """A tf.data pipeline of (images, targets) batches, reshuffled every epoch when a seed is given.

    Only the batch indices flow through tf.data; each batch is gathered from the in-memory tensors.
    """
    import tensorflow as tf

    with tf.device("/cpu:0"):
        targets = tf.constant(targets)
    indices = tf.data.Dataset.range(images.shape[0])
    if shuffle_seed is not None:
        indices = indices.shuffle(images.shape[0], seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = indices.batch(batch_size).map(lambda i: (tf.gather(images, i), tf.gather(targets, i)))
    options = tf.data.Options()
    # tf.data's graph rewrites serialise the dataset, which would copy the captured images once more.
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.with_options(options)


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


def memory_release(steps_per_execution: int) -> Any:
    """A callback that hands freed heap memory back to the system as training goes (glibc only).

    glibc keeps freed pages for reuse: without this, what XLA's compiler and each epoch's iterators
    leave behind adds up, and the train stage's peak RSS creeps up every epoch (past 1 GB on CIFAR-10).
    A trim costs milliseconds, so it runs after the first call of each epoch (where XLA compiles),
    before validation and at the end of the epoch, not after every call.
    """
    import ctypes
    import ctypes.util

    import keras

    trim = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None)

    def release(*args: Any, **kwargs: Any) -> None:
        if trim is not None:
            trim(0)

    return keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batch < steps_per_execution and release(),
        on_test_begin=release,
        on_epoch_end=release,
    )


def fit(
    model: Any,
    train: tuple[Any, np.ndarray],
    validation: tuple[Any, np.ndarray],
    settings: dict[str, Any],
    seed: int,
    callbacks: list[Any],
    verbose: int | str = "auto",
) -> Any:
    """Train `model` in place on (images, labels) splits with the `train:` params; returns the History."""
    num_classes, batch_size = model.output_shape[-1], settings["batch_size"]
    train_batches = batches(train[0], to_targets(train[1], num_classes, model.loss), batch_size, seed)
    validation_batches = batches(
        validation[0], to_targets(validation[1], num_classes, model.loss), batch_size
    )
    # Execution knobs, not part of the saved model: they change speed (XLA also the rounding), not the math.
    # Keras refuses XLA whenever TF op determinism is on, because some XLA *GPU* kernels are not
    # deterministic; on the CPU the XLA step gives identical weights run to run (tests/test_train.py).
    model._jit_compile = use_xla(model, settings["jit_compile"])
    model.steps_per_execution = settings["steps_per_execution"]
    return model.fit(
        train_batches,
        validation_data=validation_batches,
        epochs=settings["epochs"],
        shuffle=False,  # batches() reshuffles the training set every epoch itself
        callbacks=[*callbacks, memory_release(settings["steps_per_execution"])],
        verbose=verbose,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compiled_model", type=Path, help=".keras model from build_and_compile")
    parser.add_argument("data_dir", type=Path, help="directory with train.npz and validation.npz")
    parser.add_argument("model", type=Path, help="where to save the trained .keras model")
    parser.add_argument("metrics_dir", type=Path, help="DVCLive directory for per-epoch metrics")
    args = parser.parse_args()
    params = load_params()
    settings = params["train"]

    configure_tensorflow(seed=params["seed"], threads=settings["threads"])
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    model = load_model(args.compiled_model)
    train = load_images(args.data_dir / "train.npz")
    validation = load_images(args.data_dir / "validation.npz")
    verbose = 1 if sys.stdout.isatty() else 2  # progress bars on a terminal, one line per epoch in logs
    # dvcyaml=False: the metrics and plots are declared in dvc.yaml by hand, not rewritten by DVCLive.
    with Live(dir=str(args.metrics_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        fit(model, train, validation, settings, params["seed"], [DVCLiveCallback(live=live)], verbose)
    save_model(model, args.model)


if __name__ == "__main__":
    run(main)
