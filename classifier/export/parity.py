"""How closely each exported model matches the Keras model on the test set, its size, and how fast it answers.

Per format (metrics/export/metrics.json, byte-reproducible):
- test_accuracy: share of test images whose most probable class is the true one;
- top1_agreement: share of test images whose most probable class is the Keras model's (ties: the first class);
- max_abs_probability_diff: the largest |p - p_keras| over every image and class;
- size_bytes: the model file, or every file of a model folder.

Latency, the median time of one single-image prediction, changes from run to run, so the export stage
writes it to a file of its own (metrics/timing/export.json), and

    python -m classifier.export.parity [MODEL ...] [--runs 200] [--threads 2] [--json latency.json]

measures it again on demand (by default for models/model.keras and every model in models/export/).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from classifier.core.errors import StageError, run

# A float export computes the same function as Keras, up to rounding: it must agree on the top class of all
# but 1 test image in 1000. The int8 model is reported, not held to this.
MIN_FLOAT_AGREEMENT = 0.999
FLOAT_FORMATS = ("saved_model", "litert_float32", "onnx")
LATENCY_RUNS = 200
WARMUP_RUNS = 5


def parity(reference: np.ndarray, probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    return {
        "test_accuracy": float((predicted == labels).mean()),
        "top1_agreement": float((predicted == reference.argmax(axis=1)).mean()),
        "max_abs_probability_diff": float(np.abs(probabilities.astype(np.float64) - reference).max()),
    }


def check_float_agreement(metrics: dict[str, dict[str, Any]], test_images: int, where: str) -> None:
    """One StageError line for the first float format below MIN_FLOAT_AGREEMENT."""
    for name in FLOAT_FORMATS:
        agreement = metrics.get(name, {}).get("top1_agreement", 1.0)
        if agreement < MIN_FLOAT_AGREEMENT:
            differ = round((1 - agreement) * test_images)
            raise StageError(
                f"export: {name} agrees with the Keras model on {agreement:.2%} of the {test_images} test "
                f"images ({differ} differ); a float export must reach {MIN_FLOAT_AGREEMENT:.1%} ({where})"
            )


def median_latency_ms(predictor: Any, image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median wall time of `predictor.predict` on one image [1, H, W, 3], after a few warm-up calls."""
    for _ in range(WARMUP_RUNS):
        predictor.predict(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.predict(image)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 4)


def default_models() -> list[Path]:
    from classifier.export.formats import FLOAT32_TFLITE, INT8_TFLITE, ONNX, SAVED_MODEL

    export = Path("models/export")
    names = [SAVED_MODEL, FLOAT32_TFLITE, INT8_TFLITE, ONNX]
    return [Path("models/model.keras")] + [export / name for name in names if (export / name).exists()]


def main() -> None:
    parser = argparse.ArgumentParser(description="Median milliseconds of one single-image prediction.")
    parser.add_argument("models", type=Path, nargs="*", help="model files or SavedModel folders")
    parser.add_argument("--runs", type=int, default=LATENCY_RUNS, help=f"timed runs (default {LATENCY_RUNS})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's)")
    parser.add_argument("--json", type=Path, help="also write {model: {'median_ms': ...}} to this file")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    from classifier.core.files import write_json
    from classifier.export.exported import load_predictor
    from classifier.model.runtime import configure_tensorflow

    configure_tensorflow(threads=args.threads)
    timings = {}
    for path in args.models or default_models():
        predictor = load_predictor(path, args.threads)
        image = np.random.default_rng(0).integers(0, 256, (1, predictor.input_size, predictor.input_size, 3))
        timings[str(path)] = {"median_ms": median_latency_ms(predictor, image.astype(np.uint8), args.runs)}
        print(f"{path}: {timings[str(path)]['median_ms']:.3f} ms per image ({predictor.format})")
    if args.json:
        write_json(args.json, {"runs": args.runs, "threads": args.threads, "one_image": timings})


if __name__ == "__main__":
    run(main)
