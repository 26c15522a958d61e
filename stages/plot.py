"""Stage 6: PNG charts of training and of the test results.

- loss.png, accuracy.png: per epoch, training vs validation, the best validation epoch marked;
- per_class_accuracy.png: the share of each class's test images classified right;
- confusion.png: the test confusion matrix as a heat map.

evaluate draws its misclassified-images grid with plot_misclassified() from here, so every chart of
the project is drawn (and saved byte-reproducibly) in one place. No TensorFlow here.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stages.common import StageError, atomic_path, load_params, read_json, run  # noqa: E402

SERIES = {"train": "training", "eval": "validation"}
# Which validation value counts as the best epoch, per metric.
BEST = {"loss": np.argmin, "accuracy": np.argmax}


def save_figure(figure: plt.Figure, out: Path, dpi: int) -> None:
    with atomic_path(out) as tmp:
        # No "Software" stamp (matplotlib's version): the same picture always gives the same bytes.
        figure.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------------------------


def read_history(metrics_dir: Path, metric: str) -> dict[str, pd.DataFrame]:
    """Per-epoch values DVCLive wrote: {'training': frame, 'validation': frame} with step, value."""
    history = {}
    for folder, label in SERIES.items():
        path = metrics_dir / "plots" / "metrics" / folder / f"{metric}.tsv"
        if not path.exists():
            raise StageError(f"{path}: missing; run the train stage first")
        history[label] = pd.read_csv(path, sep="\t")
    return history


def best_epoch(validation: pd.DataFrame, metric: str) -> tuple[int, float]:
    """(1-based epoch, value) of the best validation value; the earliest one on ties."""
    values = validation[metric].to_numpy()
    index = int(BEST[metric](values))
    return int(validation["step"].iloc[index]) + 1, float(values[index])


def plot_history(
    history: dict[str, pd.DataFrame], metric: str, out: Path, size: tuple[float, float], dpi: int
) -> None:
    figure, axes = plt.subplots(figsize=size)
    for label, frame in history.items():
        axes.plot(frame["step"] + 1, frame[metric], marker="o", markersize=3, label=label)
    epoch, value = best_epoch(history["validation"], metric)
    axes.axvline(epoch, color="grey", linestyle=":", linewidth=1)
    best = f"best validation: epoch {epoch} ({value:.4f})"
    axes.plot([epoch], [value], marker="*", markersize=12, color="crimson", linestyle="none", label=best)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, out, dpi)


# ---------------------------------------------------------------------------------------------
# Test results
# ---------------------------------------------------------------------------------------------


def read_confusion(path: Path, classes: list[str]) -> np.ndarray:
    """Count matrix [actual, predicted] from evaluate's confusion.csv (one row per test image)."""
    if not path.exists():
        raise StageError(f"{path}: missing; run the evaluate stage first")
    # dtype=str: class names taken from folder names may look like numbers ("0", "1", ...).
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(rows["actual"]).union(rows["predicted"]) - set(index))
    if unknown:
        raise StageError(f"{path}: classes {unknown} are not in classes.json {classes}")
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, (rows["actual"].map(index).to_numpy(), rows["predicted"].map(index).to_numpy()), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Share of each class's images predicted right (its recall); 0 for a class with no images."""
    totals = matrix.sum(axis=1)
    return np.divide(np.diag(matrix), totals, out=np.zeros(len(matrix)), where=totals > 0)


def plot_per_class_accuracy(
    matrix: np.ndarray, classes: list[str], out: Path, size: tuple[float, float], dpi: int
) -> None:
    accuracy = per_class_accuracy(matrix)
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


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` misclassified images, the most confidently wrong first (ties: lower index)."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    count: int,
    out: Path,
    dpi: int,
) -> int:
    """Grid of the `count` most confident mistakes, each titled with its true and predicted class.

    Returns how many images the grid shows.
    """
    predicted = probabilities.argmax(axis=1)
    mistakes = int((predicted != labels).sum())
    shown = most_confident_mistakes(labels, probabilities, count)
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
        guess, confidence = classes[predicted[i]], probabilities[i, predicted[i]]
        axes.set_title(f"true: {classes[labels[i]]}\npredicted: {guess} {confidence:.0%}", fontsize=7)
    if len(shown):
        share = mistakes / len(labels)
        title = f"{len(shown)} most confident of {mistakes} mistakes ({share:.1%} of the test set)"
    else:
        title = "no misclassified test images"
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, out, dpi)
    return len(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_dir", type=Path, help="DVCLive directory written by train")
    parser.add_argument("confusion", type=Path, help="confusion.csv written by evaluate")
    parser.add_argument("classes", type=Path, help="classes.json written by preprocess")
    parser.add_argument("out_dir", type=Path, help="where the PNG charts go")
    args = parser.parse_args()
    settings = load_params()["plot"]
    size, dpi = (settings["width"], settings["height"]), settings["dpi"]

    for metric in ("loss", "accuracy"):
        plot_history(
            read_history(args.metrics_dir, metric), metric, args.out_dir / f"{metric}.png", size, dpi
        )
    classes = read_json(args.classes)
    matrix = read_confusion(args.confusion, classes)
    plot_per_class_accuracy(matrix, classes, args.out_dir / "per_class_accuracy.png", size, dpi)
    plot_confusion(matrix, classes, args.out_dir / "confusion.png", size, dpi)
    print(f"plot: wrote loss, accuracy, per_class_accuracy and confusion PNGs to {args.out_dir}")


if __name__ == "__main__":
    run(main)
