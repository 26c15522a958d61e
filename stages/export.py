"""Stage 7: export the trained model for apps, and measure how closely each format matches it.

Writes under models/export/ (classifier/export/formats.py): a TF SavedModel (uint8 images in, probabilities out),
LiteRT models in float32 and in full-integer int8 (uint8 input, calibrated on `export.calibration_images`
training images drawn with `seed`), ONNX, and labels.txt. Every file is byte-reproducible.

Then loads each file back as an app would (classifier/export/exported.py) and writes metrics.json: per format,
test accuracy, top-1 agreement with the Keras model, largest probability difference and size
(classifier/export/parity.py; a DVC metric, byte-reproducible). The median milliseconds of one single-image
prediction vary run to run, so they go to a file of their own (`--timing`, metrics/timing/export.json).
Fails with one line if a float format agrees with Keras on less than 99.9% of the test images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from classifier.core.errors import StageError, run
from classifier.core.files import read_json, write_json
from classifier.core.params import load_params
from classifier.data.splits import load_split
from classifier.export.exported import load_predictor
from classifier.export.formats import export_all, folder_size
from classifier.export.litert import calibration_sample
from classifier.export.parity import LATENCY_RUNS, check_float_agreement, median_latency_ms, parity
from classifier.model.checks import check_model_file
from classifier.model.runtime import configure_tensorflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="trained .keras model")
    parser.add_argument("data_dir", type=Path, help="directory with train.npz, test.npz and classes.json")
    parser.add_argument("out_dir", type=Path, help="where the exported models go (models/export)")
    parser.add_argument("metrics_dir", type=Path, help="where metrics.json goes")
    parser.add_argument(
        "--timing", type=Path, help="where to write the latency of each format (a JSON metric)"
    )
    args = parser.parse_args()
    params = load_params()
    threads = params.train.threads  # for the timings, LiteRT and ONNX too
    check_model_file(args.model)  # a bad file is one line, before the data or TensorFlow (~7 s) load

    classes = read_json(args.data_dir / "classes.json")
    test_images, test_labels = load_split(args.data_dir / "test.npz")
    if len(test_labels) == 0:
        raise StageError(f"{args.data_dir / 'test.npz'}: no test images to check the exports on")
    train_images, _ = load_split(args.data_dir / "train.npz")
    calibration = calibration_sample(train_images, params.export.calibration_images, params.seed)
    del train_images
    configure_tensorflow(seed=params.seed, threads=threads)
    keras_model = load_predictor(args.model)
    if keras_model.num_classes != len(classes):
        raise StageError(
            f"{args.model}: the model predicts {keras_model.num_classes} classes, but "
            f"{args.data_dir / 'classes.json'} names {len(classes)}"
        )
    paths = export_all(keras_model.native, classes, calibration, args.out_dir)

    reference = keras_model.predict(test_images)
    predictors = {"keras": keras_model} | {
        name: load_predictor(path, threads) for name, path in paths.items()
    }
    sizes = {"keras": folder_size(args.model)} | {name: folder_size(path) for name, path in paths.items()}
    metrics = {}
    for name, predictor in predictors.items():
        metrics[name] = parity(reference, predictor.predict(test_images), test_labels)
        metrics[name]["size_bytes"] = sizes[name]
    write_json(args.metrics_dir / "metrics.json", metrics)
    latency = {
        name: round(median_latency_ms(predictor, test_images[:1]), 4)
        for name, predictor in predictors.items()
    }
    if args.timing:
        write_json(args.timing, {"latency_ms": latency, "latency_runs": LATENCY_RUNS})
    for name, m in metrics.items():
        print(
            f"export: {name:<15} accuracy {m['test_accuracy']:.4f}, agreement {m['top1_agreement']:.4f}, "
            f"max diff {m['max_abs_probability_diff']:.2e}, {sizes[name] / 1e6:.2f} MB, "
            f"{latency[name]:.3f} ms per image (median of {LATENCY_RUNS})"
        )
    check_float_agreement(metrics, len(test_labels), f"see {args.metrics_dir / 'metrics.json'}")


if __name__ == "__main__":
    run(main)
