"""classifier/training/best_epoch.py: metrics/train/best.json from DVCLive's per-epoch TSVs."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifier.training.best_epoch import best_epoch
from classifier.core.errors import StageError
from conftest import write_history

HISTORY = {
    "train": {"accuracy": [0.3, 0.5, 0.6, 0.7], "loss": [1.5, 1.2, 1.0, 0.9]},
    "eval": {"accuracy": [0.35, 0.55, 0.5, 0.55], "loss": [1.4, 1.1, 1.2, 1.15]},
}


def test_the_best_validation_accuracy_the_earliest_on_ties(tmp_path: Path) -> None:
    write_history(tmp_path, HISTORY)
    assert best_epoch(tmp_path) == {"epoch": 2, "val_accuracy": 0.55, "val_loss": 1.1, "accuracy": 0.5, "loss": 1.2}


def test_dvclives_own_layout_without_timestamps(tmp_path: Path) -> None:
    """DVCLive 3.49 writes `step<TAB><metric>` only."""
    for folder, metrics in HISTORY.items():
        for metric, values in metrics.items():
            path = tmp_path / "plots" / "metrics" / folder / f"{metric}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join([f"step\t{metric}\n", *(f"{s}\t{v}\n" for s, v in enumerate(values))]))
    assert best_epoch(tmp_path)["epoch"] == 2


def test_an_epoch_logged_twice_counts_with_its_last_row(tmp_path: Path) -> None:
    """Should a resumed run ever log an epoch again, the rerun's values are the run's."""
    write_history(tmp_path, HISTORY)
    path = tmp_path / "plots" / "metrics" / "eval" / "accuracy.tsv"
    path.write_text(path.read_text() + "1700000009\t1\t0.45\n")
    assert best_epoch(tmp_path)["epoch"] == 4


def test_missing_logs_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"eval/accuracy\.tsv: missing; DVCLive logs it every epoch"):
        best_epoch(tmp_path)
    write_history(tmp_path, {"train": {"accuracy": [], "loss": []}, "eval": {"accuracy": [], "loss": []}})
    with pytest.raises(StageError, match="no epoch logged"):
        best_epoch(tmp_path)
