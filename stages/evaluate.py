"""Stage 5: score the trained model on the test set.

Writes DVC metrics (metrics.json: loss, accuracy, top-k accuracy; per_class.json: precision, recall and
F1 of each class, in their own file so `dvc metrics show metrics/evaluate/metrics.json` stays short), the
confusion-matrix data (one CSV row per test image, for DVC's `confusion` plot template) and a PNG
grid of the most confident mistakes. Every number is computed with numpy from the predicted
probabilities, so the definitions are the few lines below.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import (
    StageError,
    configure_tensorflow,
    load_model,
    load_params,
    load_split,
    read_json,
    run,
    write_json,
    write_text,
)
from stages.plot import plot_misclassified

# A fixed resolution, so plot.* settings stay the plot stage's alone (changing them reruns only plot).
MISCLASSIFIED_DPI = 100

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


def per_class_scores(matrix: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per class; 0 where the fraction is 0/0 (as scikit-learn reports)."""

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)

    hits = np.diag(matrix).astype(np.float64)
    precision = ratio(hits, matrix.sum(axis=0))
    recall = ratio(hits, matrix.sum(axis=1))
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


def confusion_rows(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> str:
    """One CSV row per test image (actual, predicted): the input of DVC's confusion template."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[a], classes[p]) for a, p in zip(labels, predicted))
    return out.getvalue()


def predict_probabilities(model: Any, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(images, batch_size=BATCH_SIZE, verbose=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="trained .keras model")
    parser.add_argument("data_dir", type=Path, help="directory with test.npz and classes.json")
    parser.add_argument(
        "out_dir", type=Path, help="where the metrics, confusion.csv and misclassified.png go"
    )
    args = parser.parse_args()
    params = load_params()
    top_k, misclassified = params["evaluate"]["top_k"], params["evaluate"]["misclassified"]

    images, labels = load_split(args.data_dir / "test.npz")
    classes = read_json(args.data_dir / "classes.json")
    if top_k > len(classes):
        raise StageError(f"params.yaml: evaluate.top_k = {top_k} is more than the {len(classes)} classes")
    configure_tensorflow(threads=params["train"]["threads"])
    probabilities = predict_probabilities(load_model(args.model), images)

    predicted = probabilities.argmax(axis=1)
    metrics = compute_metrics(probabilities, labels, top_k)
    write_json(args.out_dir / "metrics.json", metrics)
    per_class = per_class_scores(confusion_matrix(labels, predicted, len(classes)), classes)
    write_json(args.out_dir / "per_class.json", {"per_class": per_class})
    write_text(args.out_dir / "confusion.csv", confusion_rows(labels, predicted, classes))
    shown = plot_misclassified(
        images,
        labels,
        probabilities,
        classes,
        misclassified,
        args.out_dir / "misclassified.png",
        MISCLASSIFIED_DPI,
    )
    print(
        f"evaluate: test loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}, "
        f"top-{top_k} accuracy {metrics[f'top_{top_k}_accuracy']:.4f}; {shown} mistakes in misclassified.png"
    )


if __name__ == "__main__":
    run(main)
