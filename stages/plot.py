"""Stage 6: every PNG chart of the project, from what train and evaluate wrote (classifier/reporting/charts.py).

- loss.png, accuracy.png: per epoch, training vs validation, the best epoch (as in metrics/train/best.json)
  marked;
- per_class_accuracy.png: the share of each class's test images classified right;
- confusion.png: the test confusion matrix as a heat map;
- misclassified.png: the `plot.misclassified` most confidently misclassified test images.
No TensorFlow here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from classifier.core.errors import StageError, run
from classifier.core.files import read_json
from classifier.core.params import load_params
from classifier.data.splits import load_split
from classifier.reporting import charts
from classifier.reporting.history import read_history
from classifier.reporting.metrics import confusion_matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_dir", type=Path, help="DVCLive directory written by train")
    parser.add_argument("confusion", type=Path, help="confusion.csv written by evaluate")
    parser.add_argument("data_dir", type=Path, help="directory with test.npz and classes.json")
    parser.add_argument("out_dir", type=Path, help="where the PNG charts go")
    args = parser.parse_args()
    plot = load_params().plot
    size, dpi = (plot.width, plot.height), plot.dpi

    history = read_history(args.metrics_dir)
    for metric in ("loss", "accuracy"):
        charts.plot_history(history, metric, args.out_dir / f"{metric}.png", size, dpi)
    classes = read_json(args.data_dir / "classes.json")
    actual, predicted, confidence = charts.read_predictions(args.confusion, classes)
    matrix = confusion_matrix(actual, predicted, len(classes))
    charts.plot_per_class_accuracy(matrix, classes, args.out_dir / "per_class_accuracy.png", size, dpi)
    charts.plot_confusion(matrix, classes, args.out_dir / "confusion.png", size, dpi)
    images, _ = load_split(args.data_dir / "test.npz")
    if len(images) != len(actual):
        raise StageError(
            f"{args.confusion}: {len(actual)} rows for {len(images)} test images; rerun evaluate"
        )
    count, out = plot.misclassified, args.out_dir / "misclassified.png"
    shown = charts.plot_misclassified(images, actual, predicted, confidence, classes, count, out, dpi)
    print(
        f"plot: wrote loss, accuracy, per-class accuracy, confusion and {shown} misclassified images to {args.out_dir}"
    )


if __name__ == "__main__":
    run(main)
