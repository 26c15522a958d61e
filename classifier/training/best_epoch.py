"""The best epoch of a training run, for `metrics/train/best.json`: the epoch with the highest validation
accuracy (the earliest on ties) and its validation and training loss and accuracy.

Read from DVCLive's per-epoch TSVs (`<metrics dir>/plots/metrics/{train,eval}/<metric>.tsv`), which hold
every epoch of the run, also after a resume (the Keras History of a resumed run holds only the epochs
after the resume). No TensorFlow here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from classifier.core.errors import StageError

# Each key of best.json: (DVCLive's folder, metric), as DVCLiveCallback logs Keras' `val_<m>` and `<m>`.
SERIES = {
    "val_accuracy": ("eval", "accuracy"),
    "val_loss": ("eval", "loss"),
    "accuracy": ("train", "accuracy"),
    "loss": ("train", "loss"),
}


def read_series(metrics_dir: Path, folder: str, metric: str) -> dict[int, float]:
    """{0-based epoch (DVCLive's step): value}; for an epoch logged twice, the later row."""
    path = Path(metrics_dir) / "plots" / "metrics" / folder / f"{metric}.tsv"
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return {int(row["step"]): float(row[metric]) for row in csv.DictReader(f, delimiter="\t")}
    except FileNotFoundError:
        raise StageError(f"{path}: missing; DVCLive logs it every epoch of the train stage") from None


def best_epoch(metrics_dir: Path) -> dict[str, Any]:
    """{"epoch": 1-based, "val_accuracy", "val_loss", "accuracy", "loss"} of the best validation epoch."""
    series = {key: read_series(metrics_dir, *where) for key, where in SERIES.items()}
    accuracy = series["val_accuracy"]
    if not accuracy:
        raise StageError(f"{metrics_dir}: no epoch logged; nothing to choose the best epoch from")
    step = min(accuracy, key=lambda s: (-accuracy[s], s))
    missing = [key for key, values in series.items() if step not in values]
    if missing:
        raise StageError(f"{metrics_dir}: epoch {step + 1} has no {', '.join(missing)} in DVCLive's logs")
    return {"epoch": step + 1, **{key: values[step] for key, values in series.items()}}
