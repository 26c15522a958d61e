"""Stage 6: PNG charts of loss and accuracy per epoch, training vs validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from stages.common import StageError, atomic_path, load_params, run  # noqa: E402

SERIES = {"train": "training", "eval": "validation"}


def read_history(metrics_dir: Path, metric: str) -> dict[str, pd.DataFrame]:
    """Per-epoch values DVCLive wrote: {'training': frame, 'validation': frame} with step, value."""
    history = {}
    for folder, label in SERIES.items():
        path = metrics_dir / "plots" / "metrics" / folder / f"{metric}.tsv"
        if not path.exists():
            raise StageError(f"{path}: missing; run the train stage first")
        history[label] = pd.read_csv(path, sep="\t")
    return history


def plot_metric(history: dict[str, pd.DataFrame], metric: str, out: Path, size: tuple[float, float], dpi: int) -> None:
    figure, axes = plt.subplots(figsize=size)
    for label, frame in history.items():
        axes.plot(frame["step"] + 1, frame[metric], marker="o", markersize=3, label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(out) as tmp:
        # Fixed metadata keeps the PNG bytes identical when the numbers are.
        figure.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_dir", type=Path, help="DVCLive directory written by train")
    parser.add_argument("out_dir", type=Path, help="where loss.png and accuracy.png go")
    args = parser.parse_args()
    settings = load_params()["plot"]

    for metric in ("loss", "accuracy"):
        plot_metric(
            read_history(args.metrics_dir, metric),
            metric,
            args.out_dir / f"{metric}.png",
            size=(settings["width"], settings["height"]),
            dpi=settings["dpi"],
        )
    print(f"plot: wrote loss.png and accuracy.png to {args.out_dir}")


if __name__ == "__main__":
    run(main)
