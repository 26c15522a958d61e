"""The test-set scores evaluate reports, computed with numpy from the predicted probabilities.

Every number is defined by the few lines below.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

# Keras clips probabilities to [EPSILON, 1 - EPSILON] before the log; so do we (finite loss).
EPSILON = 1e-7
BATCH_SIZE = 256


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean categorical cross-entropy: -log(probability given to the true class), as Keras computes it."""
    probabilities = probabilities.astype(np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    true_class = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1 - EPSILON)
    return float(-np.log(true_class).mean())


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable.

    Ties count in the image's favour (fewer than k classes strictly more probable), as in Keras.
    """
    true_probability = probabilities[np.arange(len(labels)), labels]
    more_probable = (probabilities > true_probability[:, None]).sum(axis=1)
    return float((more_probable < k).mean())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [actual, predicted]."""
    pairs = labels.astype(np.int64) * num_classes + predicted
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b elementwise, 0 where b is 0 (as scikit-learn reports a 0/0 score)."""
    return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Share of each class's images predicted right: its recall, the per-class accuracy chart's bars."""
    return ratio(np.diag(matrix).astype(np.float64), matrix.sum(axis=1))


def per_class_scores(matrix: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per class; 0 where the fraction is 0/0 (as scikit-learn reports)."""
    precision = ratio(np.diag(matrix).astype(np.float64), matrix.sum(axis=0))
    recall = per_class_recall(matrix)
    f1 = ratio(2 * precision * recall, precision + recall)
    return {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
        for i, name in enumerate(classes)
    }


def compute_metrics(probabilities: np.ndarray, labels: np.ndarray, top_k: int) -> dict[str, float]:
    """The headline numbers: loss, accuracy and top-k accuracy."""
    return {
        "loss": cross_entropy(probabilities, labels),
        "accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
        f"top_{top_k}_accuracy": top_k_accuracy(probabilities, labels, top_k),
    }


def confusion_rows(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> str:
    """One CSV row per test image, in test-set order: actual and predicted class (the input of DVC's
    confusion template) and the probability given to the prediction (for the misclassified grid)."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(labels)), predicted]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["actual", "predicted", "confidence"])
    writer.writerows((classes[a], classes[p], f"{c:.6f}") for a, p, c in zip(labels, predicted, confidence))
    return out.getvalue()


def predict_probabilities(model: Any, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(images, batch_size=BATCH_SIZE, verbose=0))
