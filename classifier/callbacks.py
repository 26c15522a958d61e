"""Keras callbacks of the train stage: early stopping, memory release, and the state backups need."""

from __future__ import annotations

from typing import Any

import numpy as np

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
