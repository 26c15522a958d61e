"""classifier/training/fit.py with batches.py: identical weights run to run, execution knobs that change speed only, every option beyond the recipe on tiny data, and an exact resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import PROJECT, tool_env

# Runs one small fit in a fresh process (thread counts can only be set before TensorFlow starts) and
# prints a hash of the trained weights, the last epoch's logs and whether XLA was used.
FIT_SCRIPT = """
import hashlib, json, sys
from classifier.training.batches import load_images
from classifier.training.fit import fit
from classifier.model.build import build_model, compile_model
from classifier.model.runtime import configure_tensorflow

data, settings, strategy = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
configure_tensorflow(seed=7, threads=settings.pop("threads"))
import contextlib, tensorflow as tf
one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
scope = one_device.scope() if strategy == "one_device" else contextlib.nullcontext()
with scope:
    model = build_model(32, 3, [16], "relu")
    compile_model(model, "adam", 0.001, "categorical_crossentropy")  # 0.01 kills every ReLU for some shuffles
    train, validation = load_images(data + "/train.npz"), load_images(data + "/validation.npz")
    history = fit(model, train, validation, settings, 7, [], verbose=0)
weights = hashlib.sha256(b"".join(w.numpy().tobytes() for w in model.weights)).hexdigest()
logs = {k: v[-1] for k, v in history.history.items()}
print(json.dumps({"weights": weights, "logs": logs, "xla": model.jit_compile}))
"""


def fit_in_subprocess(data: Path, strategy: str = "none", **overrides) -> dict:
    settings = {
        **yaml.safe_load((PROJECT / "params.yaml").read_text())["train"],  # the defaults of the newer keys
        "batch_size": 16,
        "epochs": 2,
        "threads": 2,
        "steps_per_execution": 2,
        "jit_compile": True,
        **overrides,
    }
    result = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT, str(data), json.dumps(settings), strategy],
        cwd=PROJECT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "stdout": result.stdout}


@pytest.fixture(scope="module")
def reference(prepared: Path) -> dict:
    return fit_in_subprocess(prepared)


def test_fit_gives_identical_weights_run_to_run(prepared: Path, reference: dict) -> None:
    again = fit_in_subprocess(prepared)
    assert reference["xla"] is True
    assert again["weights"] == reference["weights"]
    assert again["logs"] == reference["logs"]
    assert set(reference["logs"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert reference["logs"]["val_accuracy"] > 0.5  # 3 classes: it learned something


def test_steps_per_execution_changes_speed_not_results(prepared: Path, reference: dict) -> None:
    # 1 batch per call, or the whole epoch (and more) in one call: the same updates in the same order.
    assert fit_in_subprocess(prepared, steps_per_execution=1)["weights"] == reference["weights"]
    assert fit_in_subprocess(prepared, steps_per_execution=1000)["weights"] == reference["weights"]


def test_without_xla_results_are_deterministic_too(prepared: Path) -> None:
    first = fit_in_subprocess(prepared, jit_compile=False)
    assert first["xla"] is False
    assert fit_in_subprocess(prepared, jit_compile=False)["weights"] == first["weights"]


def test_xla_falls_back_under_a_distribution_strategy(prepared: Path) -> None:
    result = fit_in_subprocess(prepared, strategy="one_device")
    assert result["xla"] is False
    assert "running without XLA" in result["stdout"]
    assert np.isfinite(result["logs"]["val_loss"])
