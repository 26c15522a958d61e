"""Every PNG chart of the project, drawn from the files train and evaluate write, byte-reproducibly.

- learning curves: per epoch, training vs validation, the best epoch (metrics/train/best.json's) marked;
- per-class accuracy and the confusion matrix of the test set;
- a grid of the most confidently misclassified test images.

No TensorFlow here.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from classifier.core.errors import StageError  # noqa: E402
from classifier.core.files import atomic_path  # noqa: E402
from classifier.reporting.history import History, best_epoch  # noqa: E402
from classifier.reporting.metrics import per_class_recall  # noqa: E402


def save_figure(figure: plt.Figure, out: Path, dpi: int) -> None:
    try:
        with atomic_path(out) as tmp:
            # No "Software" stamp (matplotlib's version): the same picture always gives the same bytes.
            figure.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    finally:
        plt.close(figure)  # a full disk too: pyplot would keep the figure open


# ---------------------------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------------------------


def learning_curve(history: History, metric: str, size: tuple[float, float]) -> plt.Figure:
    """Training and validation `metric` per epoch, the best epoch (best.json's) starred on the validation
    curve: one best epoch for both charts, the one whose weights keep_best keeps."""
    figure, axes = plt.subplots(figsize=size)
    for label, name in (("training", metric), ("validation", f"val_{metric}")):
        epochs = [step + 1 for step in history[name]]
        axes.plot(epochs, list(history[name].values()), marker="o", markersize=3, label=label)
    best = best_epoch(history)
    epoch, value = best["epoch"], best[f"val_{metric}"]
    axes.axvline(epoch, color="grey", linestyle=":", linewidth=1)
    label = f"best epoch: {epoch} (highest validation accuracy); {metric} {value:.4f}"
    axes.plot([epoch], [value], marker="*", markersize=12, color="crimson", linestyle="none", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def plot_history(history: History, metric: str, out: Path, size: tuple[float, float], dpi: int) -> None:
    save_figure(learning_curve(history, metric, size), out, dpi)


# ---------------------------------------------------------------------------------------------
# Test results
# ---------------------------------------------------------------------------------------------


def read_predictions(path: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actual, predicted, confidence) per test image from evaluate's confusion.csv: class indices, and
    the probability the model gave its prediction."""
    if not path.exists():
        raise StageError(f"{path}: missing; run the evaluate stage first")
    # dtype=str: class names taken from folder names may look like numbers ("0", "1", ...).
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(rows["actual"]).union(rows["predicted"]) - set(index))
    if unknown:
        raise StageError(f"{path}: classes {unknown} are not in classes.json {classes}")
    actual, predicted = rows["actual"].map(index).to_numpy(), rows["predicted"].map(index).to_numpy()
    return actual, predicted, rows["confidence"].astype(float).to_numpy()


def plot_per_class_accuracy(
    matrix: np.ndarray, classes: list[str], out: Path, size: tuple[float, float], dpi: int
) -> None:
    accuracy = per_class_recall(matrix)
    overall = np.trace(matrix) / max(1, matrix.sum())
    figure, axes = plt.subplots(figsize=size)
    positions = np.arange(len(classes))
    bars = axes.barh(positions, accuracy, color="tab:blue")
    axes.bar_label(bars, labels=[f"{a:.1%}" for a in accuracy], padding=3, fontsize=8)
    axes.axvline(overall, color="crimson", linestyle="--", linewidth=1, label=f"all classes: {overall:.1%}")
    axes.set_yticks(positions, classes)
    axes.invert_yaxis()  # first class on top, as in classes.json
    axes.set_xlim(0, 1.12)  # room for the value labels
    axes.set_xlabel("test accuracy (share of the class's images predicted right)")
    axes.set_title("accuracy per class (test)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    save_figure(figure, out, dpi)


def plot_confusion(
    matrix: np.ndarray, classes: list[str], out: Path, size: tuple[float, float], dpi: int
) -> None:
    # Colour by share of the row, so rare classes are as readable as common ones; text is the count.
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    side = max(size)
    figure, axes = plt.subplots(figsize=(side, side))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fontsize = 8 if len(classes) <= 12 else 5
    for (actual, predicted), count in np.ndenumerate(matrix):
        if count:
            colour = "white" if shares[actual, predicted] > 0.5 else "black"
            axes.text(
                predicted, actual, str(count), ha="center", va="center", fontsize=fontsize, color=colour
            )
    ticks = np.arange(len(classes))
    axes.set_xticks(ticks, classes, rotation=45, ha="right")
    axes.set_yticks(ticks, classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title("confusion matrix (test; colour = share of the actual class)")
    figure.tight_layout()
    save_figure(figure, out, dpi)


def most_confident_mistakes(
    labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, count: int
) -> np.ndarray:
    """Indices of up to `count` misclassified images, the most confidently wrong first (ties: lower index)."""
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-confidence[wrong], kind="stable")][:count]


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    classes: list[str],
    count: int,
    out: Path,
    dpi: int,
) -> int:
    """Grid of the `count` most confident mistakes, each titled with its true and predicted class.

    Returns how many images the grid shows.
    """
    mistakes = int((predicted != labels).sum())
    shown = most_confident_mistakes(labels, predicted, confidence, count)
    columns = max(1, math.ceil(math.sqrt(len(shown))))
    rows = max(1, math.ceil(len(shown) / columns))
    # 1.6 x 1.8 inches per image, plus a band for the title (at least 4 inches wide, so it fits).
    figure, grid = plt.subplots(
        rows, columns, figsize=(max(4.0, 1.6 * columns), 1.8 * rows + 0.5), squeeze=False
    )
    for axes in grid.flat:
        axes.axis("off")
    for axes, i in zip(grid.flat, shown):
        axes.imshow(images[i], interpolation="nearest")
        guess = f"{classes[predicted[i]]} {confidence[i]:.0%}"
        axes.set_title(f"true: {classes[labels[i]]}\npredicted: {guess}", fontsize=7)
    if len(shown):
        share = mistakes / len(labels)
        title = f"{len(shown)} most confident of {mistakes} mistakes ({share:.1%} of the test set)"
    else:
        title = "no misclassified test images"
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, out, dpi)
    return len(shown)
