"""The learning-rate schedule: constant, or linear warm-up then cosine decay."""

from __future__ import annotations

from typing import Any

from classifier.core.params_schema import TrainParams
from classifier.training.batches import batch_count


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


def use_learning_rate_schedule(model: Any, train: TrainParams, train_size: int, replicas: int = 1) -> None:
    """Give the optimizer the `train.lr_schedule` (once). Do it before loading a backup into the model:
    the optimizer's saved variables differ with and without a schedule."""
    # The config holds the schedule itself; `optimizer.learning_rate` would be its value at this step.
    rate = model.optimizer.get_config()["learning_rate"]
    if train.lr_schedule == "cosine" and not isinstance(rate, dict):
        steps_per_epoch = batch_count(train_size, train.batch_size, replicas)
        model.optimizer.learning_rate = learning_rate_schedule(
            float(rate), train.epochs, steps_per_epoch, train.warmup_epochs
        )
