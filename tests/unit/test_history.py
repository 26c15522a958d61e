"""classifier/reporting/history.py: DVCLive's per-epoch TSVs read once, and the best epoch of best.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifier.core.errors import StageError
from classifier.reporting.history import best_epoch, best_step, read_history

from conftest import write_history

HISTORY = {
    "train": {"accuracy": [0.3, 0.5, 0.6, 0.7], "loss": [1.5, 1.2, 1.0, 0.9]},
    "eval": {"accuracy": [0.35, 0.55, 0.5, 0.55], "loss": [1.4, 1.1, 1.2, 1.15]},
}


def test_the_best_validation_accuracy_the_earliest_on_ties(tmp_path: Path) -> None:
    write_history(tmp_path, HISTORY)
    best = best_epoch(read_history(tmp_path))
    assert best == {"epoch": 2, "val_accuracy": 0.55, "val_loss": 1.1, "accuracy": 0.5, "loss": 1.2}


def test_the_best_step_follows_keep_best_a_later_epoch_must_be_strictly_better() -> None:
    assert best_step({0: 0.4, 1: 0.6, 2: 0.6, 3: 0.5}) == 1
    assert best_step({0: 0.4}) == 0
    # The first epoch counts whatever its value, as in ResumableEarlyStopping.on_epoch_end.
    assert best_step({0: float("nan"), 1: 0.5}) == 0
    with pytest.raises(StageError, match="no epoch logged"):
        best_step({})


def test_dvclives_own_layout_without_timestamps(tmp_path: Path) -> None:
    """DVCLive 3.49 writes `step<TAB><metric>` only."""
    for folder, metrics in HISTORY.items():
        for metric, values in metrics.items():
            path = tmp_path / "plots" / "metrics" / folder / f"{metric}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join([f"step\t{metric}\n", *(f"{s}\t{v}\n" for s, v in enumerate(values))]))
    assert best_epoch(read_history(tmp_path))["epoch"] == 2


def test_an_epoch_logged_twice_counts_with_its_last_row(tmp_path: Path) -> None:
    """Should a resumed run ever log an epoch again, the rerun's values are the run's."""
    write_history(tmp_path, HISTORY)
    path = tmp_path / "plots" / "metrics" / "eval" / "accuracy.tsv"
    path.write_text(path.read_text() + "1700000009\t1\t0.45\n")
    history = read_history(tmp_path)
    assert best_epoch(history)["epoch"] == 4
    # The charts read the same rows: one value per epoch, in epoch order, the rerun's for epoch 2.
    assert history["val_accuracy"] == {0: 0.35, 1: 0.45, 2: 0.5, 3: 0.55}


def test_epochs_come_in_order_whatever_the_order_of_the_rows(tmp_path: Path) -> None:
    write_history(tmp_path, HISTORY)
    path = tmp_path / "plots" / "metrics" / "train" / "loss.tsv"
    header, *rows = path.read_text().splitlines()
    path.write_text("\n".join([header, *reversed(rows)]) + "\n")
    assert list(read_history(tmp_path)["loss"].items()) == [(0, 1.5), (1, 1.2), (2, 1.0), (3, 0.9)]


def test_missing_logs_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"eval/accuracy\.tsv: missing; DVCLive logs it every epoch"):
        best_epoch(read_history(tmp_path))
    write_history(tmp_path, {"train": {"accuracy": [], "loss": []}, "eval": {"accuracy": [], "loss": []}})
    with pytest.raises(StageError, match="no epoch logged"):
        best_epoch(read_history(tmp_path))


def test_missing_history_names_the_file(tmp_path: Path) -> None:
    # Moved from test_charts.py with the reader: the plot stage's error names the missing file too.
    partial = {"train": HISTORY["train"], "eval": {"accuracy": HISTORY["eval"]["accuracy"]}}
    with pytest.raises(StageError, match=r"eval/loss\.tsv: missing"):
        read_history(write_history(tmp_path, partial))


def test_an_epoch_missing_from_one_series_is_named(tmp_path: Path) -> None:
    write_history(tmp_path, HISTORY | {"train": {"accuracy": [0.3, 0.5], "loss": [1.5]}})
    with pytest.raises(StageError, match="epoch 2 has no loss in DVCLive's logs"):
        best_epoch(read_history(tmp_path))
