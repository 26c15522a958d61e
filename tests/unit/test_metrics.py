"""classifier/reporting/metrics.py: the test-set numbers, checked against values worked out by hand on a tiny example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from classifier.reporting.metrics import (
    compute_metrics,
    confusion_matrix,
    confusion_rows,
    cross_entropy,
    per_class_recall,
    per_class_scores,
    top_k_accuracy,
)  # fmt: skip

# Four classes, five test images; class "d" is never the answer nor predicted.
CLASSES = ["a", "b", "c", "d"]
LABELS = np.array([0, 0, 1, 2, 2])


PROBABILITIES = np.array(
    [
        [0.70, 0.20, 0.10, 0.00],  # a -> a  right
        [0.30, 0.60, 0.10, 0.00],  # a -> b  wrong; the true class is 2nd
        [0.10, 0.80, 0.10, 0.00],  # b -> b  right
        [0.50, 0.45, 0.05, 0.00],  # c -> a  wrong; the true class is 3rd
        [0.20, 0.30, 0.50, 0.00],  # c -> c  right
    ]
)


# By hand: confusion [actual, predicted] = a: [1 1 0 0], b: [0 1 0 0], c: [1 0 1 0], d: [0 0 0 0].
EXPECTED_CONFUSION = [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
EXPECTED_PER_CLASS = {
    # precision = right / predicted as the class; recall = right / images of the class; F1 = 2PR/(P+R)
    "a": {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2},
    "b": {"precision": 1 / 2, "recall": 1 / 1, "f1": 2 * 0.5 * 1 / 1.5},
    "c": {"precision": 1 / 1, "recall": 1 / 2, "f1": 2 * 1 * 0.5 / 1.5},
    "d": {"precision": 0.0, "recall": 0.0, "f1": 0.0},  # 0/0 counts as 0, as scikit-learn reports it
}


def test_accuracy_and_top_k():
    metrics = compute_metrics(PROBABILITIES, LABELS, top_k=2)
    assert metrics.keys() == {"loss", "accuracy", "top_2_accuracy"}
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["top_2_accuracy"] == pytest.approx(4 / 5)  # all but image 3 (true class 3rd)
    assert top_k_accuracy(PROBABILITIES, LABELS, 1) == pytest.approx(3 / 5)
    assert top_k_accuracy(PROBABILITIES, LABELS, 3) == pytest.approx(1.0)


def test_top_k_counts_ties_in_the_images_favour():
    # True class tied for first with another: in the top 1, as tf.math.in_top_k (Keras) decides.
    assert top_k_accuracy(np.array([[0.4, 0.4, 0.2]]), np.array([1]), 1) == 1.0


def test_loss_is_the_mean_negative_log_probability_of_the_true_class():
    expected = -(math.log(0.7) + math.log(0.3) + math.log(0.8) + math.log(0.05) + math.log(0.5)) / 5
    assert cross_entropy(PROBABILITIES, LABELS) == pytest.approx(expected, rel=1e-12)


def test_loss_of_a_zero_probability_is_clipped_like_keras():
    assert cross_entropy(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-7))


def test_loss_matches_keras():
    import keras

    targets = np.eye(4, dtype=np.float32)[LABELS]
    keras_loss = float(
        np.mean(keras.losses.categorical_crossentropy(targets, PROBABILITIES.astype(np.float32)))
    )
    assert cross_entropy(PROBABILITIES, LABELS) == pytest.approx(keras_loss, rel=1e-6)


def test_confusion_matrix_and_per_class_scores():
    matrix = confusion_matrix(LABELS, PROBABILITIES.argmax(axis=1), len(CLASSES))
    assert matrix.tolist() == EXPECTED_CONFUSION
    scores = per_class_scores(matrix, CLASSES)
    assert scores.keys() == EXPECTED_PER_CLASS.keys()
    for name, expected in EXPECTED_PER_CLASS.items():
        assert scores[name] == pytest.approx(expected), name


def test_per_class_accuracy_is_the_recall():
    # Moved from test_charts.py: the per-class accuracy chart draws per_class_recall.
    matrix = np.array([[1, 1, 0], [1, 2, 0], [0, 0, 0]])
    # Per-class accuracy is the diagonal over the row: 1/2, 2/3, and 0 for a class with no images.
    assert per_class_recall(matrix) == pytest.approx([0.5, 2 / 3, 0.0])
    scores = per_class_scores(matrix, ["a", "b", "c"])
    assert per_class_recall(matrix).tolist() == [score["recall"] for score in scores.values()]


def test_confusion_rows_are_the_data_of_the_dvc_confusion_plot():
    # DVC's confusion template (dvc.yaml: x actual, y predicted) counts these rows per cell.
    rows = confusion_rows(LABELS, PROBABILITIES, CLASSES)
    # ... and the plot stage reads the probability of each prediction back for the misclassified grid.
    expected = (
        "actual,predicted,confidence\na,a,0.700000\na,b,0.600000\nb,b,0.800000\nc,a,0.500000\nc,c,0.500000\n"
    )
    assert rows == expected
