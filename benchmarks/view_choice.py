"""Which model.shift_average? Scores a trained model with every test-time view average on its validation
split, which chooses, and its test split, which only reports.

usage: python benchmarks/view_choice.py [--shifts 0 1 2 3] [--no-flip] [--json scores.json] MODEL DATA

MODEL is a trained .keras file (models/model.keras, wrapped or not: its trained model is used), DATA the
folder of the run's validation.npz and test.npz (data/prepared; the validation split depends on the
seed, so score each run in its own workspace: `dvc exp apply NAME && dvc checkout`). The views are made
by the train stage's own wrapper (classifier/model/view_average.py), so a score here is what evaluate
reports for a run with that shift_average: the same trained weights, as training does not depend on it.

Prints a Markdown table: per shift, the number of views and the validation and test accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from classifier.core.files import write_json  # noqa: E402
from classifier.data.splits import load_split  # noqa: E402

SPLITS = ("validation", "test")


def scores(model_path: Path, data: Path, shifts: list[int], flip: bool) -> dict[int, dict[str, float]]:
    """{shift: {split: accuracy}} of the trained model in `model_path` averaged over the views that
    model.flip_average = `flip` and model.shift_average = shift give."""
    from classifier.model.runtime import configure_tensorflow
    from classifier.model.saving import load_model
    from classifier.model.view_average import unwrapped, with_view_average

    configure_tensorflow(seed=0)
    trained = unwrapped(load_model(model_path))
    splits = {split: load_split(data / f"{split}.npz") for split in SPLITS}
    result = {}
    for shift in shifts:
        model = with_view_average(trained, flip, shift)
        result[shift] = {
            split: float(np.mean(model.predict(images, batch_size=500, verbose=0).argmax(axis=1) == labels))
            for split, (images, labels) in splits.items()
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a trained .keras model")
    parser.add_argument("data", type=Path, help="the folder of its validation.npz and test.npz")
    parser.add_argument("--shifts", type=int, nargs="+", default=[0, 1, 2, 3], help="shift_average values")
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="model.flip_average off")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    args = parser.parse_args()
    result = scores(args.model, args.data, args.shifts, args.flip)
    views = 2 if args.flip else 1
    print("| shift_average | views | validation accuracy | test accuracy |\n| --- | --- | --- | --- |")
    for shift, accuracy in result.items():
        count = views * (9 if shift else 1)
        print(f"| {shift} | {count} | {accuracy['validation']:.4f} | {accuracy['test']:.4f} |")
    if args.json:
        write_json(args.json, {str(shift): accuracy for shift, accuracy in result.items()})


if __name__ == "__main__":
    main()
