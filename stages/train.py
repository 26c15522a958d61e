"""Stage 4: fit the compiled model on the prepared data, logging every epoch with DVCLive."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import configure_tensorflow, load_model, load_params, load_split, run, save_model


def to_targets(labels: np.ndarray, num_classes: int, loss: str) -> np.ndarray:
    """Integer labels for sparse losses, one-hot rows for categorical_crossentropy (the recipe)."""
    if loss.startswith("sparse_"):
        return labels
    return np.eye(num_classes, dtype=np.float32)[labels]


def fit(
    model: Any,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    batch_size: int,
    epochs: int,
    callbacks: list[Any],
) -> Any:
    num_classes = model.output_shape[-1]
    return model.fit(
        train[0],
        to_targets(train[1], num_classes, model.loss),
        validation_data=(validation[0], to_targets(validation[1], num_classes, model.loss)),
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        callbacks=callbacks,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compiled_model", type=Path, help=".keras model from build_and_compile")
    parser.add_argument("data_dir", type=Path, help="directory with train.npz and validation.npz")
    parser.add_argument("model", type=Path, help="where to save the trained .keras model")
    parser.add_argument("metrics_dir", type=Path, help="DVCLive directory for per-epoch metrics")
    args = parser.parse_args()
    params = load_params()
    settings = params["train"]

    configure_tensorflow(seed=params["seed"], threads=settings["threads"])
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    model = load_model(args.compiled_model)
    train = load_split(args.data_dir / "train.npz")
    validation = load_split(args.data_dir / "validation.npz")
    # dvcyaml=False: the metrics and plots are declared in dvc.yaml by hand, not rewritten by DVCLive.
    with Live(dir=str(args.metrics_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        fit(model, train, validation, settings["batch_size"], settings["epochs"], [DVCLiveCallback(live=live)])
    save_model(model, args.model)


if __name__ == "__main__":
    run(main)
