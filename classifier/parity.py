"""How closely each exported model matches the Keras model on the test set, its size, and how fast it answers.

Per format (metrics/export/metrics.json, byte-reproducible):
- test_accuracy: share of test images whose most probable class is the true one;
- top1_agreement: share of test images whose most probable class is the Keras model's (ties: the first class);
- max_abs_probability_diff: the largest |p - p_keras| over every image and class;
- size_bytes: the model file, or every file of a model folder.
Latency (metrics/export/latency.json, not reproducible): the median time of one single-image prediction.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from classifier.errors import StageError

# A float export computes the same function as Keras, up to rounding: it must agree on the top class of all
# but 1 test image in 1000. The int8 model is reported, not held to this.
MIN_FLOAT_AGREEMENT = 0.999
FLOAT_FORMATS = ("saved_model", "litert_float32", "onnx")
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


def median_latency_ms(predictor: Any, image: np.ndarray, runs: int) -> float:
    """Median wall time of `predictor.predict` on one image [1, H, W, 3], after a few warm-up calls."""
    for _ in range(WARMUP_RUNS):
        predictor.predict(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.predict(image)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 4)
