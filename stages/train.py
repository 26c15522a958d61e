"""Stage 4: fit the compiled model on the prepared data, logging every epoch with DVCLive.

Same math as the classic `model.fit(x, y, batch_size=32)`: a fresh shuffle every epoch, one optimizer update
per batch of `train.batch_size`, validation after every epoch. What makes it fast on a CPU (see README,
"Performance"): the uint8 images stay in memory as one tensor and batches are gathered inside TensorFlow
(no float32 copy of the dataset, no Python per batch), many batches run per call into TensorFlow
(`train.steps_per_execution`) and each training step is compiled by XLA (`train.jit_compile`).

Beyond the recipe (README, "A better recipe"), all off by default: a warm-up + cosine learning-rate
schedule, early stopping that keeps the best epoch's weights, and augmentation of the training batches
(random shifts and mirroring, seeded per epoch and batch; validation and test images are never touched).

A killed run resumes after its last completed epoch (stages/backup.py), and `train.distribution` spreads
every batch over several devices or machines (stages/distribute.py): README, "Scaling out and resuming".
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stages import distribute
from stages.backup import DEFAULT_DIR, Backup, run_key
from stages.common import (
    StageError,
    configure_tensorflow,
    load_model,
    load_params,
    load_split,
    run,
    save_model,
)

# oneDNN's allocator keeps every freed block in its own pool; the system allocator gives large blocks back
# (~240 MB less peak memory on CIFAR-10). Read when TensorFlow loads: set before anything imports it.
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")


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


def augment(images: Any, key: Any, crop_padding: int, flip: bool) -> Any:
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


def augmenter(settings: dict[str, Any], seed: int, epoch: Any) -> Any:
    """The `train.augment` params as a function of (images, batch number), or None when they are off.

    Batch b of epoch e is augmented with a key made from (seed, e, b) only, so a resumed run augments
    exactly as an uninterrupted one.
    """
    if not settings["flip"] and not settings["crop_padding"]:
        return None
    import tensorflow as tf

    def apply(images: Any, batch: Any) -> Any:
        key = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), epoch]), batch)
        return augment(images, key, settings["crop_padding"], settings["flip"])

    return apply


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
        dataset = numbered.map(lambda b, i: (augmentation(tf.gather(images, i), b), tf.gather(targets, i)))
    options = tf.data.Options()
    # tf.data's graph rewrites serialise the dataset, which would copy the captured images once more.
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.with_options(options)


def learning_rate_schedule(peak: float, epochs: int, steps_per_epoch: int, warmup_epochs: int) -> Any:
    """Linear warm-up from 0 to `peak` over `warmup_epochs`, then cosine decay to 0 at the last step."""
    import keras

    warmup = warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak,
        decay_steps=(epochs - warmup_epochs) * steps_per_epoch,
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


def use_learning_rate_schedule(
    model: Any, settings: dict[str, Any], train_size: int, replicas: int = 1
) -> None:
    """Give the optimizer the `train.lr_schedule` (once). Do it before loading a backup into the model:
    the optimizer's saved variables differ with and without a schedule."""
    # The config holds the schedule itself; `optimizer.learning_rate` would be its value at this step.
    rate = model.optimizer.get_config()["learning_rate"]
    if settings["lr_schedule"] == "cosine" and not isinstance(rate, dict):
        steps_per_epoch = batch_count(train_size, settings["batch_size"], replicas)
        model.optimizer.learning_rate = learning_rate_schedule(
            float(rate), settings["epochs"], steps_per_epoch, settings["warmup_epochs"]
        )


def early_stopping(patience: int | None) -> Any:
    """Keras' EarlyStopping on validation accuracy (model selection on the validation split, never on the
    test set), keeping the best epoch's weights; None when `patience` is None.

    Its progress (best accuracy so far, that epoch's weights, epochs since) goes into every backup via
    `state()`, and `resume_from()` puts it back, so a resumed run stops and selects as an uninterrupted one.
    """
    if patience is None:
        return None
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        resumed: dict[str, np.ndarray] | None = None

        def state(self) -> dict[str, np.ndarray]:
            progress = {"wait": np.array(self.wait), "best_epoch": np.array(self.best_epoch)}
            if self.best is not None:
                progress["best"] = np.array(self.best)
            weights = {f"weights_{i:04d}": w for i, w in enumerate(self.best_weights or [])}
            return progress | weights

        def resume_from(self, state: dict[str, np.ndarray]) -> None:
            self.resumed = state

        def on_train_begin(self, logs: Any = None) -> None:
            super().on_train_begin(logs)  # resets the progress: restore it afterwards
            if self.resumed:
                state = self.resumed
                self.wait, self.best_epoch = int(state["wait"]), int(state["best_epoch"])
                self.best = float(state["best"]) if "best" in state else None
                weights = sorted(name for name in state if name.startswith("weights_"))
                self.best_weights = [state[name] for name in weights] or None

    return ResumableEarlyStopping(
        monitor="val_accuracy", mode="max", patience=patience, restore_best_weights=True, verbose=1
    )


def epoch_counter() -> tuple[Any, Any]:
    """A variable holding the number of the epoch being trained, and the Keras callback that sets it."""
    import keras
    import tensorflow as tf

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    return epoch, keras.callbacks.LambdaCallback(on_epoch_begin=lambda number, logs: epoch.assign(number))


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
    A trim costs milliseconds, so it runs when training starts, after the first call of each epoch (where
    XLA compiles), before validation and at the end of the epoch, not after every call.
    """
    import ctypes
    import ctypes.util

    import keras

    trim = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None)

    def release(*args: Any, **kwargs: Any) -> None:
        if trim is not None:
            trim(0)

    return keras.callbacks.LambdaCallback(
        on_train_begin=release,
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
    strategy: Any = None,
    initial_epoch: int = 0,
) -> Any:
    """Train `model` in place on (images, labels) splits with the `train:` params; returns the History.

    Starts after `initial_epoch` completed epochs. Under a tf.distribute `strategy` (the model made in its
    scope) each replica trains on its slice of every batch; without one, Keras' model.fit does the work.
    """
    num_classes = model.output_shape[-1]
    train_targets = to_targets(train[1], num_classes, model.loss)
    validation_targets = to_targets(validation[1], num_classes, model.loss)
    replicas = distribute.replicas(strategy)
    epoch, set_epoch = epoch_counter()
    callbacks = [set_epoch, *callbacks, memory_release(settings["steps_per_execution"])]
    augmentation = augmenter(settings["augment"], seed, epoch)
    use_learning_rate_schedule(model, settings, len(train_targets), replicas)

    def train_batches() -> Any:
        return index_batches(len(train_targets), settings["batch_size"], replicas, seed, epoch)

    def validation_batches() -> Any:
        return index_batches(len(validation_targets), settings["batch_size"], replicas)

    if strategy is not None:
        if settings["jit_compile"] or settings["steps_per_execution"] > 1:
            print("train: jit_compile and steps_per_execution apply to single-process training only")
        return distribute.fit(
            model,
            strategy,
            distribute.distribute_batches(
                strategy, train_batches, lambda rows: gather(rows, train[0], train_targets, augmentation)
            ),
            distribute.distribute_batches(
                strategy, validation_batches, lambda rows: gather(rows, validation[0], validation_targets)
            ),
            settings["epochs"],
            initial_epoch,
            callbacks,
            example=(train[0][:1], train_targets[:1]),
        )
    # Execution knobs, not part of the saved model: they change speed (XLA also the rounding), not the math.
    # Keras refuses XLA whenever TF op determinism is on, because some XLA *GPU* kernels are not
    # deterministic; on the CPU the XLA step gives identical weights run to run (tests/test_train.py).
    model._jit_compile = use_xla(model, settings["jit_compile"])
    model.steps_per_execution = settings["steps_per_execution"]
    return model.fit(
        gather(train_batches(), train[0], train_targets, augmentation),
        validation_data=gather(validation_batches(), validation[0], validation_targets),
        epochs=settings["epochs"],
        initial_epoch=initial_epoch,
        shuffle=False,  # index_batches() shuffles the training set every epoch itself
        callbacks=callbacks,
        verbose=verbose,
    )


def random_streams(model: Any) -> list[Any]:
    """The state variables of the model's random layers (dropout), which Keras' save_weights leaves out."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def callback_state(model: Any, stopper: Any) -> dict[str, np.ndarray]:
    """What a backup needs beyond the weights and optimizer (which Keras' save_weights writes): where each
    dropout layer's random stream is, and early stopping's progress."""
    state = {f"random_stream_{i:03d}": np.asarray(v) for i, v in enumerate(random_streams(model))}
    return state | (stopper.state() if stopper else {})


def restore_callback_state(model: Any, stopper: Any, state: dict[str, np.ndarray]) -> None:
    """Put back what callback_state() saved."""
    for i, variable in enumerate(random_streams(model)):
        if f"random_stream_{i:03d}" in state:
            variable.assign(state[f"random_stream_{i:03d}"])
    if stopper:
        stopper.resume_from(state)


def resume(backup: Backup, strategy: Any, model: Any, metrics_dir: Path | None) -> tuple[int, dict[str, Any]]:
    """Load the last backup of this run into `model` (and DVCLive's folder) if there is one; return the
    number of epochs it completed (0 when training starts afresh; every worker gets the same answer) and
    the callbacks' state saved with it."""
    if len(set(distribute.from_every_worker(strategy, int(backup.key[:15], 16)))) > 1:
        raise StageError("the workers differ in params.yaml or in the stage's input files; make them the same")
    backup.forget_other_runs()
    # Workers killed a moment apart may be one backup apart: all resume from the oldest.
    epoch = min(distribute.from_every_worker(strategy, backup.latest()))
    if epoch and epoch not in backup.epochs():
        raise StageError(
            f"{backup.dir}: no backup of epoch {epoch}, where the other workers resume; "
            f"delete {backup.root} on every worker to start over"
        )
    if not epoch:
        return 0, {}
    state = backup.restore(model, epoch, metrics_dir)
    print(f"train: resuming after epoch {epoch} from {backup.dir}")
    return epoch, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compiled_model", type=Path, help=".keras model from build_and_compile")
    parser.add_argument("data_dir", type=Path, help="directory with train.npz and validation.npz")
    parser.add_argument("model", type=Path, help="where to save the trained .keras model")
    parser.add_argument("metrics_dir", type=Path, help="DVCLive directory for per-epoch metrics")
    parser.add_argument("--backup-dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    args = parser.parse_args()
    params = load_params()
    settings = params["train"]
    worker = distribute.worker_index(settings["distribution"])
    chief = worker == 0  # the only process that writes the model and the metrics

    configure_tensorflow(seed=params["seed"], threads=settings["threads"])
    strategy = distribute.make_strategy(settings["distribution"], settings["batch_size"])
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    with strategy.scope() if strategy else contextlib.nullcontext():
        model = load_model(args.compiled_model)
    inputs = [args.compiled_model, args.data_dir / "train.npz", args.data_dir / "validation.npz"]
    train = load_images(inputs[1])
    validation = load_images(inputs[2])
    backup = Backup(args.backup_dir, run_key(params, inputs), worker)
    metrics_dir = args.metrics_dir if chief else None
    use_learning_rate_schedule(model, settings, len(train[1]), distribute.replicas(strategy))
    initial_epoch, state = resume(backup, strategy, model, metrics_dir)
    stopper = early_stopping(settings["early_stopping"])
    # After DVCLive's callback has logged the epoch and early stopping has seen it, so that the backup
    # holds both.
    restore_callback_state(model, stopper, state)
    callbacks = [backup.callback(model, metrics_dir, lambda: callback_state(model, stopper))]
    if stopper:
        callbacks.insert(0, stopper)
    verbose = 1 if sys.stdout.isatty() else 2  # progress bars on a terminal, one line per epoch in logs
    if chief:
        # dvcyaml=False: the metrics and plots are declared in dvc.yaml by hand, not rewritten by DVCLive.
        resumed = initial_epoch > 0
        with Live(dir=str(metrics_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resumed) as live:
            live.step = initial_epoch  # DVCLive's own resume would log the epoch after epoch 1 as step 0 again
            callbacks.insert(0, DVCLiveCallback(live=live))
            fit(model, train, validation, settings, params["seed"], callbacks, verbose, strategy, initial_epoch)
        del train, validation  # saving needs memory of its own: free the images first (peak RSS);
        gc.collect()  # tf.data's functions hold them in reference cycles
        save_model(model, args.model)
    else:
        fit(model, train, validation, settings, params["seed"], callbacks, verbose, strategy, initial_epoch)
    backup.delete()


if __name__ == "__main__":
    run(main)
