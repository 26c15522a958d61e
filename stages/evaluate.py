"""Stage 5: score the trained model on the test set; numbers only (the plot stage draws them).

- metrics.json: loss, accuracy and top-k accuracy (DVC scores);
- per_class.json: precision, recall and F1 of each class, in a file of its own so that
  `dvc metrics show metrics/evaluate/metrics.json` stays short;
- confusion.csv: one row per test image (actual, predicted, confidence), for DVC's `confusion` plot
  template and for the plot stage's grid of misclassified images.
Every number is computed with numpy from the predicted probabilities (classifier/reporting/metrics.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from classifier.core.errors import StageError, run
from classifier.core.files import read_json, write_json, write_text
from classifier.core.params import load_params
from classifier.data.splits import load_split
from classifier.model.checks import check_model_file
from classifier.model.runtime import configure_tensorflow
from classifier.model.saving import load_model
from classifier.reporting import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="trained .keras model")
    parser.add_argument("data_dir", type=Path, help="directory with test.npz and classes.json")
    parser.add_argument("out_dir", type=Path, help="where metrics.json, per_class.json and confusion.csv go")
    args = parser.parse_args()
    params = load_params()
    top_k = params.evaluate.top_k

    classes = read_json(args.data_dir / "classes.json")
    if top_k > len(classes):
        raise StageError(f"params.yaml: evaluate.top_k = {top_k} is more than the {len(classes)} classes")
    check_model_file(args.model)  # a bad file is one line, before the data or TensorFlow (~7 s) load
    images, labels = load_split(args.data_dir / "test.npz")
    configure_tensorflow(threads=params.train.threads)
    probabilities = metrics.predict_probabilities(load_model(args.model), images)

    scores = metrics.compute_metrics(probabilities, labels, top_k)
    write_json(args.out_dir / "metrics.json", scores)
    matrix = metrics.confusion_matrix(labels, probabilities.argmax(axis=1), len(classes))
    write_json(args.out_dir / "per_class.json", {"per_class": metrics.per_class_scores(matrix, classes)})
    write_text(args.out_dir / "confusion.csv", metrics.confusion_rows(labels, probabilities, classes))
    print(
        f"evaluate: test loss {scores['loss']:.4f}, accuracy {scores['accuracy']:.4f}, "
        f"top-{top_k} accuracy {scores[f'top_{top_k}_accuracy']:.4f}"
    )


if __name__ == "__main__":
    run(main)
