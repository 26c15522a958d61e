"""Which early-stopping rule would have kept the best model? Replays real validation curves through the
train stage's own early stopping (classifier/training/callbacks.py), for several rules at once.

usage: python benchmarks/stopping_rules.py [--epochs 100] RUN [RUN ...]

Each RUN is an experiment name or git rev whose commit holds DVCLive's per-epoch validation accuracy
(metrics/train/plots/metrics/eval/accuracy.tsv), or the path of such a TSV. Train the runs with
`train.early_stopping: null` and `train.keep_best: true`: then each curve is the whole schedule, and
since early stopping only decides when to stop (it never changes an epoch's update), replaying the curve
up to a rule's stopping epoch is exactly what that rule would have seen and kept. Validation only: the
test set plays no part.

Prints a Markdown table: per rule, the epoch it stops after and the validation accuracy of the epoch it
keeps, for each run, and their mean.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from classifier.training.callbacks import early_stopping, first_counted_epoch  # noqa: E402

TSV = "metrics/train/plots/metrics/eval/accuracy.tsv"
RULES = {  # name: early_stopping() arguments, as train.* params would give them
    "patience 10": {"patience": 10},
    "patience 10, from 0.8": {"patience": 10, "start_epoch": 0.8},
    "patience 10, min_delta 0.005": {"patience": 10, "min_delta": 0.005},
    "patience 10, smoothing 0.9": {"patience": 10, "smoothing": 0.9},
    "patience 20": {"patience": 20},
    "never stop, keep best": {"patience": None, "keep_best": True},
}


def read_curve(run: str) -> list[float]:
    """The validation accuracy of every epoch of `run` (a TSV path, an experiment name or a git rev)."""
    if Path(run).is_file():
        text = Path(run).read_text()
    else:
        refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
                              capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        rev = next((ref for ref in refs if ref.rsplit("/", 1)[-1] == run), run)
        shown = subprocess.run(["git", "show", f"{rev}:{TSV}"], capture_output=True, text=True, check=False)
        if shown.returncode != 0:
            sys.exit(f"error: {run}: no {TSV} there ({' '.join(shown.stderr.split())})")
        text = shown.stdout
    return [float(row["accuracy"]) for row in csv.DictReader(io.StringIO(text), delimiter="\t")]


def replay(curve: list[float], epochs: int, rule: dict[str, Any]) -> tuple[int, int, float]:
    """(epochs trained, 1-based epoch kept, its validation accuracy) under `rule`."""
    import keras

    options = dict(rule)
    options["start_epoch"] = first_counted_epoch(options.pop("start_epoch", 0.0), epochs)
    stopper = early_stopping(options.pop("patience"), **options)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])  # the callback saves its weights
    stopper.set_model(model)
    model.stop_training = False
    stopper.verbose = 0
    stopper.on_train_begin()
    trained = len(curve)
    for epoch, value in enumerate(curve):
        stopper.on_epoch_end(epoch, {"val_accuracy": value})
        if model.stop_training:
            trained = epoch + 1
            break
    return trained, stopper.best_epoch + 1, stopper.best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="experiment names, git revs or TSV files")
    parser.add_argument(
        "--epochs", type=int, default=100, help="train.epochs of the runs (for the 'from' rules)"
    )
    args = parser.parse_args()
    curves = {
        run if not Path(run).is_file() else f"run {i}": read_curve(run) for i, run in enumerate(args.runs, 1)
    }
    header = [
        "rule",
        *(f"{run}: stops, keeps (val acc)" for run in curves),
        "mean kept val acc",
        "mean epochs",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, rule in RULES.items():
        results = [replay(curve, args.epochs, rule) for curve in curves.values()]
        cells = [f"{trained}, {kept} ({value:.4f})" for trained, kept, value in results]
        mean_value = statistics.mean(value for _, _, value in results)
        mean_epochs = statistics.mean(trained for trained, _, _ in results)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean_value:.4f} | {mean_epochs:.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
