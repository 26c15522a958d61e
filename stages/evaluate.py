"""Stage 5: test-set loss and accuracy (DVC metrics) and the confusion-matrix data (a DVC plot)."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import (
    configure_tensorflow,
    load_model,
    load_params,
    load_split,
    read_json,
    run,
    write_json,
    write_text,
)
from stages.train import to_targets


def evaluate(model: Any, images: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[dict, np.ndarray]:
    """Return ({"loss", "accuracy"} on the test set, predicted class per image)."""
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    results = model.evaluate(
        images, to_targets(labels, model.output_shape[-1], model.loss), batch_size=batch_size, verbose=0, return_dict=True
    )
    metrics = {"loss": float(results["loss"]), "accuracy": float(results["accuracy"])}
    return metrics, probabilities.argmax(axis=1)


def confusion_rows(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> str:
    """One CSV row per test image (actual, predicted): the input of DVC's confusion template."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[a], classes[p]) for a, p in zip(labels, predicted))
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="trained .keras model")
    parser.add_argument("data_dir", type=Path, help="directory with test.npz and classes.json")
    parser.add_argument("out_dir", type=Path, help="where metrics.json and confusion.csv go")
    args = parser.parse_args()
    params = load_params()

    configure_tensorflow(threads=params["train"]["threads"])
    model = load_model(args.model)
    images, labels = load_split(args.data_dir / "test.npz")
    classes = read_json(args.data_dir / "classes.json")
    metrics, predicted = evaluate(model, images, labels, batch_size=256)
    write_json(args.out_dir / "metrics.json", metrics)
    write_text(args.out_dir / "confusion.csv", confusion_rows(labels, predicted, classes))
    print(f"evaluate: test loss {metrics['loss']:.4f}, test accuracy {metrics['accuracy']:.4f}")


if __name__ == "__main__":
    run(main)
