"""classifier/reporting/charts.py: the best epoch starred, the confusion rows read back, the mistakes grid."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from classifier.core.errors import StageError
from classifier.reporting import charts
from classifier.reporting.charts import most_confident_mistakes, plot_misclassified
from classifier.reporting.history import best_epoch, read_history
from classifier.reporting.metrics import confusion_matrix

from conftest import assert_png, write_history

HISTORY = {
    "train": {"loss": [2.0, 1.4, 1.1, 0.9], "accuracy": [0.3, 0.5, 0.6, 0.7]},
    "eval": {"loss": [1.9, 1.5, 1.7, 1.5], "accuracy": [0.3, 0.45, 0.45, 0.4]},
}


def starred_point(history: dict, metric: str) -> tuple[float, float]:
    """The (epoch, value) the learning curve marks with its star, read from the drawn figure."""
    figure = charts.learning_curve(history, metric, (6, 4))
    try:
        [star] = [line for line in figure.axes[0].get_lines() if line.get_marker() == "*"]
        [epoch], [value] = star.get_xdata(), star.get_ydata()
        return float(epoch), float(value)
    finally:
        plt.close(figure)


def test_best_epoch_is_the_first_best_validation_value(tmp_path):
    history = read_history(write_history(tmp_path, HISTORY))
    # Validation accuracy .3 .45 .45 .4: highest first at the 2nd epoch, where validation loss is 1.5.
    assert starred_point(history, "loss") == (2, 1.5)
    assert starred_point(history, "accuracy") == (2, 0.45)


# Lowest validation loss at the 2nd epoch, highest validation accuracy at the 3rd: they disagree.
DISAGREEING = {
    "train": {"loss": [2.0, 1.4, 1.1, 0.9], "accuracy": [0.3, 0.5, 0.6, 0.7]},
    "eval": {"loss": [1.9, 1.2, 1.3, 1.6], "accuracy": [0.3, 0.45, 0.5, 0.48]},
}


def test_both_charts_mark_the_epoch_best_json_names(tmp_path):
    history = read_history(write_history(tmp_path, DISAGREEING))
    # What the train stage writes to metrics/train/best.json, and the epoch keep_best restores.
    best = best_epoch(history)
    assert best["epoch"] == 3, "the highest validation accuracy, not the lowest validation loss (epoch 2)"
    assert starred_point(history, "loss") == (3, best["val_loss"]) == (3, 1.3)
    assert starred_point(history, "accuracy") == (3, best["val_accuracy"]) == (3, 0.5)


def test_confusion_matrix_from_csv_keeps_classes_json_order(tmp_path):
    csv = tmp_path / "confusion.csv"
    # Class names that look like numbers must stay names, in classes.json's order ("10" after "2").
    csv.write_text("actual,predicted,confidence\n2,2,0.9\n2,10,0.8\n10,10,0.7\n10,10,0.6\n10,2,0.5\n")
    actual, predicted, confidence = charts.read_predictions(csv, ["2", "10", "unused"])
    assert confidence.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5]
    matrix = confusion_matrix(actual, predicted, 3)
    assert matrix.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]


def test_confusion_with_an_unknown_class_is_a_one_line_error(tmp_path):
    csv = tmp_path / "confusion.csv"
    csv.write_text("actual,predicted,confidence\ncat,dog,0.5\n")
    with pytest.raises(StageError, match=r"confusion\.csv: classes \['dog'\] are not in classes\.json"):
        charts.read_predictions(csv, ["cat"])


def test_confusion_before_evaluate_ran_is_a_one_line_error(tmp_path):
    with pytest.raises(StageError, match=r"confusion\.csv: missing; run the evaluate stage first"):
        charts.read_predictions(tmp_path / "confusion.csv", ["cat"])


# Five test images of four classes: images 1 (b at 0.6) and 3 (a at 0.5) are misclassified.
CLASSES = ["a", "b", "c", "d"]
LABELS, PREDICTED = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 0, 2])
CONFIDENCE = np.array([0.7, 0.6, 0.8, 0.5, 0.5])


def test_most_confident_mistakes_come_first():
    assert most_confident_mistakes(LABELS, PREDICTED, CONFIDENCE, 10).tolist() == [1, 3]
    assert most_confident_mistakes(LABELS, PREDICTED, CONFIDENCE, 1).tolist() == [1]


@pytest.mark.parametrize("mistakes_shown", [2, 1])
def test_misclassified_grid_is_a_valid_png(tmp_path, mistakes_shown):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    out = tmp_path / "misclassified.png"
    shown = plot_misclassified(images, LABELS, PREDICTED, CONFIDENCE, CLASSES, mistakes_shown, out, dpi=100)
    assert shown == mistakes_shown
    image = assert_png(out)
    # One row of 1.8 inches + a 0.5 inch title band, at least 4 inches wide, at 100 dpi.
    assert image.size == (400, 230)


def test_misclassified_grid_without_mistakes_still_writes_a_png(tmp_path):
    out = tmp_path / "misclassified.png"
    images, confidence = np.zeros((5, 32, 32, 3), np.uint8), np.ones(5)
    assert plot_misclassified(images, LABELS, LABELS, confidence, CLASSES, 25, out, dpi=100) == 0
    assert out.stat().st_size > 0
