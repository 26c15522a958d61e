"""A training run's per-epoch history, as DVCLive logged it, and its best epoch.

The train stage writes the best epoch to `metrics/train/best.json`, the plot stage marks it on the loss
and accuracy charts: both call `best_epoch()` on what `read_history()` returns, so the picture and
`dvc metrics show` always name the same epoch, the one whose weights `train.keep_best` and early
stopping keep (classifier/training/callbacks.py).

DVCLive writes `<metrics dir>/plots/metrics/{train,eval}/<metric>.tsv`, which hold every epoch of the
run, also after a resume (the Keras History of a resumed run holds only the epochs after the resume).
No TensorFlow, numpy or pandas here: the train stage imports this too.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from classifier.core.errors import StageError

# Each series by Keras' name for it: (DVCLive's folder, metric), as DVCLiveCallback logs `val_<m>` and `<m>`.
SERIES = {
    "val_accuracy": ("eval", "accuracy"),
    "val_loss": ("eval", "loss"),
    "accuracy": ("train", "accuracy"),
    "loss": ("train", "loss"),
}

# {series name: {0-based epoch (DVCLive's step): value}}, epochs in increasing order.
History = dict[str, dict[int, float]]


def read_series(metrics_dir: Path, folder: str, metric: str) -> dict[int, float]:
    """{0-based epoch: value}, epochs in increasing order; for an epoch logged twice, the later row.

    A resumed run logs again an epoch that was cut short after DVCLive wrote it and before the backup
    kept it: the rerun's values are the run's, as they are for early stopping, whose state comes from
    the backup.
    """
    path = Path(metrics_dir) / "plots" / "metrics" / folder / f"{metric}.tsv"
    try:
        with open(path, encoding="utf-8", newline="") as f:
            values = {int(row["step"]): float(row[metric]) for row in csv.DictReader(f, delimiter="\t")}
    except FileNotFoundError:
        raise StageError(
            f"{path}: missing; DVCLive logs it every epoch of the train stage: run the train stage first"
        ) from None
    return dict(sorted(values.items()))


def read_history(metrics_dir: Path) -> History:
    """Every series of SERIES; a StageError if a file is missing or no epoch is logged."""
    history = {name: read_series(metrics_dir, *where) for name, where in SERIES.items()}
    if not history["val_accuracy"]:
        raise StageError(f"{metrics_dir}: no epoch logged; nothing to choose the best epoch from")
    return history


def best_step(val_accuracy: dict[int, float]) -> int:
    """The 0-based epoch with the highest validation accuracy, the earliest on ties.

    The very rule of keep_best / early stopping (ResumableEarlyStopping.on_epoch_end in
    classifier/training/callbacks.py): a later epoch counts only if strictly better than every earlier
    one, and the first epoch counts whatever its value.
    """
    best: tuple[int, float] | None = None
    for step, value in val_accuracy.items():
        if best is None or value > best[1]:
            best = (step, value)
    if best is None:
        raise StageError("no epoch logged; nothing to choose the best epoch from")
    return best[0]


def best_epoch(history: History) -> dict[str, Any]:
    """{"epoch": 1-based, "val_accuracy", "val_loss", "accuracy", "loss"} of the best epoch: best.json."""
    step = best_step(history["val_accuracy"])
    missing = [name for name, values in history.items() if step not in values]
    if missing:
        raise StageError(f"epoch {step + 1} has no {', '.join(missing)} in DVCLive's logs")
    return {"epoch": step + 1, **{name: values[step] for name, values in history.items()}}
