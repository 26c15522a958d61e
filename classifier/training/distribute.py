"""Data-parallel training with tf.distribute, chosen by `train.distribution`.

- `single`: one process on the default device, trained by Keras' own `model.fit`.
- `mirrored`: one process with a replica on every local GPU, or on every logical CPU device when there
  is no GPU (`tf.distribute.MirroredStrategy`).
- `multi_worker`: one process per machine, joined by the TF_CONFIG environment variable
  (`tf.distribute.MultiWorkerMirroredStrategy`); worker 0 is the chief, the only one that writes outputs.

`train.batch_size` is the global batch. At every step replica r of R takes rows [r*m/R, (r+1)*m/R) of
the global batch of m rows, computes the gradient of its slice, and the gradients are summed across
replicas (all-reduce) before the same update is applied to every copy of the model: one process's math
with that batch, up to the order of floating-point sums.

Keras 3.15's `model.fit` cannot drive MultiWorkerMirroredStrategy (keras-team/keras#20585: it asks the
strategy to reduce nested batches and scalar logs, which it rejects), and under MirroredStrategy it
steps the optimizer once more per epoch when the distributed dataset's length is unknown. Distributed
runs therefore go through `fit` below: a plain loop around the model's own `train_step` and `test_step`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from classifier.core.errors import StageError


def worker_from_tf_config(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(index of this worker, number of workers) from TF_CONFIG, checked with a one-line error."""
    environ = os.environ if environ is None else environ
    example = '{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}'
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise StageError(
            f"train.distribution = multi_worker needs the TF_CONFIG environment variable, like {example}"
        )
    try:
        config = json.loads(raw)
        workers, task = config["cluster"]["worker"], config["task"]
        index, kinds = task["index"], set(config["cluster"]) | {task.get("type")}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StageError(f"TF_CONFIG = {raw!r} is not accepted; expected JSON like {example}") from None
    if kinds != {"worker"}:
        raise StageError(f"TF_CONFIG: only 'worker' tasks are supported (worker 0 is the chief); got {raw!r}")
    if not isinstance(workers, list) or not isinstance(index, int) or not 0 <= index < len(workers):
        raise StageError(f"TF_CONFIG: task index {index!r} is not one of the {len(workers)} workers listed")
    return index, len(workers)


def worker_index(distribution: str) -> int:
    """This process's worker number: 0 (the chief) unless TF_CONFIG says otherwise for multi_worker."""
    return worker_from_tf_config()[0] if distribution == "multi_worker" else 0


def make_strategy(distribution: str, batch_size: int) -> Any | None:
    """The tf.distribute strategy for `distribution` (None for `single`), once the global batch is known
    to split evenly over its replicas. Call right after configure_tensorflow, before TensorFlow runs ops."""
    import tensorflow as tf

    if distribution == "single":
        return None
    if distribution == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
    else:
        worker_from_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    count = strategy.num_replicas_in_sync
    if batch_size % count:
        raise StageError(
            f"params.yaml: train.batch_size = {batch_size} does not split evenly over the {count} replicas of "
            f"train.distribution = {distribution}; use a multiple of {count}"
        )
    share = batch_size // count
    print(f"train: {distribution} on {count} replicas, {share} images each of every batch of {batch_size}")
    return strategy


def replicas(strategy: Any | None) -> int:
    return 1 if strategy is None else strategy.num_replicas_in_sync


def from_every_worker(strategy: Any | None, value: int) -> list[int]:
    """`value` as each replica of every worker has it: how workers compare notes before training."""
    if strategy is None:
        return [value]
    import tensorflow as tf

    gathered = strategy.gather(strategy.run(lambda: tf.constant([value], tf.int64)), axis=0)
    return [int(v) for v in gathered.numpy()]


def distribute_batches(strategy: Any, index_batches: Callable[[], Any], gather: Callable[[Any], Any]) -> Any:
    """Each replica's slice of every global batch: `index_batches()` yields the global batches of row
    indices, `gather` turns a dataset of indices into one of (images, targets)."""
    import tensorflow as tf

    def for_input_pipeline(context: Any) -> Any:
        # One input pipeline per worker; it feeds its local replicas one element each, in turn.
        total = context.num_replicas_in_sync
        local = total // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def slices(indices: Any) -> Any:
            rows = tf.shape(indices, out_type=tf.int64)[0]
            replica = tf.data.Dataset.range(first, first + local)
            return replica.map(lambda r: indices[r * rows // total : (r + 1) * rows // total])

        return gather(index_batches().flat_map(slices))

    return strategy.distribute_datasets_from_function(for_input_pipeline)


def fit(
    model: Any,
    strategy: Any,
    train: Any,
    validation: Any,
    epochs: int,
    initial_epoch: int,
    callbacks: list[Any],
    example: tuple[Any, Any],
) -> Any:
    """model.fit's epoch loop for a strategy: train on every batch, validate, call the Keras callbacks.

    `example` is one (images, targets) batch, to create the model's metric variables with. Returns the
    History, as model.fit does.
    """
    import keras
    import tensorflow as tf

    _create_metric_variables(model, strategy, *example)
    train_step = tf.function(lambda batch: strategy.run(model.train_step, args=(batch,)))
    test_step = tf.function(lambda batch: strategy.run(model.test_step, args=(batch,)))
    history = keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList([*callbacks, history], model=model)
    model.stop_training = False
    callbacks.on_train_begin()
    logs: dict[str, Any] = {}
    for epoch in range(initial_epoch, epochs):
        callbacks.on_epoch_begin(epoch)
        try:
            logs = _one_epoch(model, train_step, train, test_step, validation)
        except tf.errors.UnavailableError:  # another worker died: the collective ops are aborted
            lost = f"epoch {epoch + 1}: lost contact with another worker; restart every worker, they resume"
            raise StageError(lost) from None
        print(
            f"Epoch {epoch + 1}/{epochs} - "
            + " - ".join(f"{name}: {value:.4f}" for name, value in logs.items())
        )
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:  # set by early stopping
            break
    callbacks.on_train_end(logs)
    return history


def _one_epoch(model: Any, train_step: Any, train: Any, test_step: Any, validation: Any) -> dict[str, float]:
    model.reset_metrics()
    for batch in train:
        train_step(batch)
    # Metric variables sum over replicas when read here, so these are the whole epoch's results.
    logs = {name: float(value) for name, value in model.get_metrics_result().items()}
    model.reset_metrics()
    for batch in validation:
        test_step(batch)
    return logs | {f"val_{name}": float(value) for name, value in model.get_metrics_result().items()}


def _create_metric_variables(model: Any, strategy: Any, images: Any, targets: Any) -> None:
    """Create the compiled loss and metric variables now, in the strategy's scope: created inside the
    first distributed step instead, they would be made per replica, which MirroredStrategy rejects."""
    with strategy.scope():
        predictions = model(images)
        model.compute_loss(x=images, y=targets, y_pred=predictions)
        model.compute_metrics(images, targets, predictions, sample_weight=None)
        model.reset_metrics()
