"""Keras callbacks of the train stage: early stopping, memory release, and the state backups need."""

from __future__ import annotations

from typing import Any

import numpy as np

from classifier.core.params_schema import TrainParams


def early_stopping_for(train: TrainParams) -> Any:
    """The train stage's early stopping from its `train:` params; None when it neither stops nor keeps."""
    return early_stopping(
        train.early_stopping,
        keep_best=train.keep_best,
        start_epoch=first_counted_epoch(train.early_stopping_from, train.epochs),
        min_delta=train.early_stopping_min_delta,
        smoothing=train.early_stopping_smoothing,
    )


def first_counted_epoch(fraction: float, epochs: int) -> int:
    """`train.early_stopping_from` as a 0-based epoch: the first floor(fraction * epochs) epochs neither
    stop the run nor count toward the patience (0.29 * 100 is 28.999...: the 1e-9 makes it 29)."""
    return int(fraction * epochs + 1e-9)


def early_stopping(
    patience: int | None,
    *,
    keep_best: bool = False,
    start_epoch: int = 0,
    min_delta: float = 0.0,
    smoothing: float = 0.0,
) -> Any:
    """Keras' EarlyStopping on validation accuracy (model selection on the validation split, never on the
    test set), keeping the best epoch's weights; None when `patience` is None and not `keep_best`.

    The best epoch is the one with the highest val_accuracy (the earliest on ties); its weights are put
    back when training ends. Patience counts the epochs, from `start_epoch` on, without a better score,
    where better = more than `min_delta` above the best score so far and the score is val_accuracy, or
    with `smoothing` s > 0 its moving average ema = s * ema + (1 - s) * val_accuracy (from the first
    epoch's value). `patience` None (with `keep_best`) never stops. With the defaults this is exactly
    Keras' EarlyStopping(patience, restore_best_weights=True).

    Its progress (best accuracy so far, that epoch's weights, epochs since, the average) goes into every
    backup via `state()`, and `resume_from()` puts it back, so a resumed run stops and selects as an
    uninterrupted one.
    """
    if patience is None and not keep_best:
        return None
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        resumed: dict[str, np.ndarray] | None = None
        ema: float | None = None  # the score: val_accuracy, or its moving average
        reference: float | None = None  # the best score so far, what patience waits to see beaten

        def state(self) -> dict[str, np.ndarray]:
            progress = {"wait": np.array(self.wait), "best_epoch": np.array(self.best_epoch)}
            for name in ("best", "ema", "reference"):
                if getattr(self, name) is not None:
                    progress[name] = np.array(getattr(self, name))
            weights = {f"weights_{i:04d}": w for i, w in enumerate(self.best_weights or [])}
            return progress | weights

        def resume_from(self, state: dict[str, np.ndarray]) -> None:
            self.resumed = state

        def on_train_begin(self, logs: Any = None) -> None:
            super().on_train_begin(logs)  # resets the progress: restore it afterwards
            self.ema = self.reference = None
            if self.resumed:
                state = self.resumed
                self.wait, self.best_epoch = int(state["wait"]), int(state["best_epoch"])
                self.best, self.ema, self.reference = (
                    float(state[name]) if name in state else None for name in ("best", "ema", "reference")
                )
                weights = sorted(name for name in state if name.startswith("weights_"))
                self.best_weights = [state[name] for name in weights] or None

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            value = self.get_monitor_value(logs)
            if value is None:
                return
            value = float(value)
            if self.best is None or value > self.best:
                self.best, self.best_epoch, self.best_weights = value, epoch, self.model.get_weights()
            smoothed = smoothing and self.ema is not None
            self.ema = smoothing * self.ema + (1 - smoothing) * value if smoothed else value
            if self.reference is None or self.ema - self.reference > min_delta:
                self.reference, self.wait = self.ema, 0
            elif epoch >= start_epoch:
                self.wait += 1
            if patience is not None and self.wait >= patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True

    return ResumableEarlyStopping(
        monitor="val_accuracy", mode="max", patience=patience or 0, restore_best_weights=True, verbose=1
    )


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


def random_streams(model: Any) -> list[Any]:
    """The state variables of the model's random layers (dropout), which Keras' save_weights leaves out."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def callback_state(model: Any, stopper: Any, timer: Any = None) -> dict[str, np.ndarray]:
    """What a backup needs beyond the weights and optimizer (which Keras' save_weights writes): where each
    dropout layer's random stream is, early stopping's progress and the epochs' times so far."""
    state = {f"random_stream_{i:03d}": np.asarray(v) for i, v in enumerate(random_streams(model))}
    return state | (stopper.state() if stopper else {}) | (timer.state() if timer else {})


def restore_callback_state(model: Any, stopper: Any, state: dict[str, np.ndarray], timer: Any = None) -> None:
    """Put back what callback_state() saved."""
    for i, variable in enumerate(random_streams(model)):
        if f"random_stream_{i:03d}" in state:
            variable.assign(state[f"random_stream_{i:03d}"])
    if stopper:
        stopper.resume_from(state)
    if timer:
        timer.resume_from(state)
