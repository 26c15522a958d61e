"""Classify your own image files with the trained model: top-k classes and their probabilities.

    python -m classifier.predict photo.jpg holidays/ [--top-k 3] [--json] [--model models/model.keras]

Folders are searched recursively for image files (.jpg, .png, ...); files named on the command line
are always tried. Each image is fitted exactly as preprocess fits the training images (centre crop,
resize to the model's input size, RGB). Class names are read from classes.json (`--classes`; by
default preprocess's data/prepared/classes.json). `--model` takes a .keras file, or any format the export
stage writes (models/export/: a SavedModel folder, a LiteRT .tflite, an ONNX file). Needs no DVC.

An unreadable or non-image file gets one error line on stderr and the others are still classified;
the exit code is 1 if any file failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifier.core.errors import StageError, run
from classifier.core.files import read_json
from classifier.data.images import decode_image, is_image_name
from classifier.export.exported import check_model, load_predictor
from classifier.model.runtime import configure_tensorflow

DEFAULT_MODEL = Path("models/model.keras")
DEFAULT_CLASSES = Path("data/prepared/classes.json")
CHUNK = 256  # images decoded and classified at a time, so a huge folder never fills memory


@dataclass
class Result:
    path: str
    top: list[tuple[str, float]] | None = None  # (class, probability), most probable first
    error: str | None = None  # why the file could not be classified


def find_images(paths: list[Path]) -> Iterator[Path]:
    """Every named file, and every image file under every named folder (sorted, hidden ones skipped)."""
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path).parts
                if (
                    file.is_file()
                    and is_image_name(file.name)
                    and not any(p.startswith(".") for p in relative)
                ):
                    yield file
        else:
            yield path  # missing or unreadable: reported when read


def read_classes(path: Path, num_outputs: int) -> list[str]:
    try:
        classes = read_json(path)
    except FileNotFoundError:
        raise StageError(
            f"{path}: class names not found; pass --classes (classes.json from preprocess)"
        ) from None
    except ValueError as error:
        raise StageError(f"{path}: not valid JSON ({error})") from None
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise StageError(f"{path}: expected a JSON list of class names")
    if len(classes) != num_outputs:
        raise StageError(f"{path}: {len(classes)} class names, but the model predicts {num_outputs} classes")
    return classes


def top_classes(probabilities: np.ndarray, classes: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]  # ties: the earlier class first
    return [(classes[i], float(probabilities[i])) for i in order]


def load_image(path: Path, size: int) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StageError(f"{path}: cannot read ({error.strerror or error})") from None
    return decode_image(data, size, str(path))


def classify(model: Any, files: list[Path], classes: list[str], k: int) -> Iterator[Result]:
    """Yield one Result per file, in order: its top-k classes, or why it could not be read."""
    size = model.input_shape[1]
    for start in range(0, len(files), CHUNK):
        images, results = [], []
        for path in files[start : start + CHUNK]:
            try:
                images.append(load_image(path, size))
                results.append(Result(str(path)))
            except StageError as error:
                results.append(Result(str(path), error=str(error)))
        if images:
            # One chunk is one batch; predict_on_batch skips the tf.data pipeline (and its log noise).
            probabilities = model.predict_on_batch(np.stack(images))
            for result, p in zip((r for r in results if r.error is None), probabilities):
                result.top = top_classes(np.asarray(p), classes, k)
        yield from results


def format_table(results: list[Result], k: int) -> str:
    """One line per image: its path, then 'class probability%' for the k most probable classes."""
    rows = [["image"] + [f"#{rank}" for rank in range(1, k + 1)]]
    rows += [[r.path] + [f"{name} {probability:.1%}" for name, probability in r.top] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(k + 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def to_json(results: list[Result]) -> str:
    items = [
        {"path": r.path, "error": r.error}
        if r.error
        else {"path": r.path, "top": [{"class": name, "probability": p} for name, p in r.top]}
        for r in results
    ]
    return json.dumps(items, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", type=Path, nargs="+", metavar="PATH", help="image files or folders of images"
    )
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to show per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help=f"a .keras file, SavedModel folder, .tflite or .onnx file (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--classes", type=Path, default=DEFAULT_CLASSES, help=f"class names (default {DEFAULT_CLASSES})"
    )
    args = parser.parse_args()
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")

    check_model(args.model)  # a bad file is one line before TensorFlow's start (~7 s)
    configure_tensorflow()
    model = load_predictor(args.model)
    classes = read_classes(args.classes, model.output_shape[-1])
    k = min(args.top_k, len(classes))
    files = list(find_images(args.paths))
    if not files:
        raise StageError(f"no image files found in {' '.join(map(str, args.paths))}")

    results = list(classify(model, files, classes, k))
    failures = [r for r in results if r.error]
    for failure in failures:
        print(f"error: {failure.error}", file=sys.stderr)
    classified = [r for r in results if not r.error]
    if args.json:
        print(to_json(results))
    elif classified:
        print(format_table(classified, k))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
