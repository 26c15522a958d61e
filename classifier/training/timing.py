"""How long the work took: the only numbers that differ between two runs of the same params.

They go to files of their own under metrics/timing/ (train.json is a top-level DVC metric, which
`dvc exp show` and `python -m classifier.seeds_report` read), so that every other output, dvc.lock included, stays
byte-identical run to run.

Importing this module loads neither TensorFlow nor numpy (the Keras callback imports them when made):
the seeds report formats its training times with `describe()` and stays a light command.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

STATE_KEY = "epoch_seconds"


def epoch_timer() -> Any:
    """A Keras callback that times each epoch: its batches, its validation and the callbacks listed
    before it. Its state() goes into every backup, so a resumed run still counts the epochs done before."""
    import keras
    import numpy as np

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.started = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self.started)

        def state(self) -> dict[str, np.ndarray]:
            return {STATE_KEY: np.asarray(self.seconds, dtype=np.float64)}

        def resume_from(self, state: dict[str, np.ndarray]) -> None:
            self.seconds = [float(s) for s in state.get(STATE_KEY, [])]

    return EpochTimer()


def train_timing(seconds: list[float]) -> dict[str, Any]:
    """metrics/timing/train.json: the seconds of all epochs. One number, because every metric is a column
    of `dvc exp show`, whose plain view has room for very few (docs/metrics-and-plots.md)."""
    return {"seconds": round(sum(seconds), 1)}


def median_epoch(seconds: list[float]) -> float:
    return statistics.median(seconds) if seconds else 0.0


def describe(seconds: float) -> str:
    """A duration as people read it: "42.0 s" under two minutes, "12.3 min" from there."""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
