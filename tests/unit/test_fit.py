"""The training job (classifier/training/job.py with fit.py and batches.py), in process on tiny data: identical
weights run to run, execution knobs that change speed only, and XLA only where it is verified."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from classifier.core.params import validate_params
from classifier.core.params_schema import Params
from classifier.model.runtime import configure_tensorflow

from conftest import PROJECT

TRAIN = {"batch_size": 16, "epochs": 2, "threads": 2, "steps_per_execution": 2, "jit_compile": True}


def params_with(**train: object) -> Params:
    """params.yaml's defaults (the newer keys' too), seed 7 and a small fast run."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["seed"] = 7
    params["train"].update(TRAIN, **train)
    return validate_params(params)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from classifier.model.build import build_model, compile_model
    from classifier.model.saving import save_model

    configure_tensorflow(seed=7)
    model = build_model(32, 3, [16], "relu")
    compile_model(model, "adam", 0.001, "categorical_crossentropy")  # 0.01 kills every ReLU for some shuffles
    path = tmp_path_factory.mktemp("compiled") / "compiled.keras"
    save_model(model, path)
    return path


def weights_hash(model: object) -> str:
    return hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.weights)).hexdigest()


def train_in_process(data: Path, compiled: Path, **train: object) -> dict:
    """One training job in a folder of its own: a hash of the trained weights, the last epoch's logs and
    whether XLA was used."""
    from classifier.training.job import train_model

    run = Path(tempfile.mkdtemp(prefix="run-", dir=data.parent))
    with contextlib.chdir(run):  # DVCLive looks for a DVC repo in the working folder
        trained = train_model(
            compiled, data, run / "model.keras", run / "metrics", params_with(**train), None, run / "backup"
        )
    logs = {name: values[-1] for name, values in trained.history.items()}
    return {"weights": weights_hash(trained.model), "logs": logs, "xla": trained.model.jit_compile}


@pytest.fixture(scope="module")
def reference(prepared: Path, compiled: Path) -> dict:
    return train_in_process(prepared, compiled)


def test_fit_gives_identical_weights_run_to_run(prepared: Path, compiled: Path, reference: dict) -> None:
    again = train_in_process(prepared, compiled)
    assert reference["xla"] is True
    assert again["weights"] == reference["weights"]
    assert again["logs"] == reference["logs"]
    assert set(reference["logs"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert reference["logs"]["val_accuracy"] > 0.5  # 3 classes: it learned something


def test_steps_per_execution_changes_speed_not_results(
    prepared: Path, compiled: Path, reference: dict
) -> None:
    # 1 batch per call, or the whole epoch (and more) in one call: the same updates in the same order.
    assert train_in_process(prepared, compiled, steps_per_execution=1)["weights"] == reference["weights"]
    assert train_in_process(prepared, compiled, steps_per_execution=1000)["weights"] == reference["weights"]


def test_without_xla_results_are_deterministic_too(prepared: Path, compiled: Path) -> None:
    first = train_in_process(prepared, compiled, jit_compile=False)
    assert first["xla"] is False
    assert train_in_process(prepared, compiled, jit_compile=False)["weights"] == first["weights"]


def test_xla_falls_back_under_a_distribution_strategy(prepared: Path, capsys: pytest.CaptureFixture) -> None:
    """A model made in a strategy's scope but fitted by Keras' model.fit: XLA is not verified there."""
    import tensorflow as tf

    from classifier.model.build import build_model, compile_model
    from classifier.training.batches import load_images
    from classifier.training.fit import fit

    configure_tensorflow(seed=7)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = build_model(32, 3, [16], "relu")
        compile_model(model, "adam", 0.001, "categorical_crossentropy")
        train, validation = load_images(prepared / "train.npz"), load_images(prepared / "validation.npz")
        history = fit(model, train, validation, params_with().train, 7, [], verbose=0)
    assert model.jit_compile is False
    assert "running without XLA" in capsys.readouterr().out
    assert np.isfinite(history.history["val_loss"][-1])
