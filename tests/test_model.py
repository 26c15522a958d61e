"""The model stage: defaults are the classic recipe, and saved models are byte-reproducible."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import PROJECT, tool_env
from classifier.model import build_model, compile_model
from classifier.model_files import load_model, save_model
from classifier.runtime import configure_tensorflow


@pytest.fixture(scope="module")
def recipe_model():
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    configure_tensorflow(seed=params["seed"])
    model = build_model(params["preprocess"]["image_size"], 10, params["model"]["hidden_units"], params["model"]["activation"])
    settings = params["model"]
    compile_model(model, settings["optimizer"], settings["learning_rate"], settings["loss"])
    return model


def test_default_params_build_the_classic_recipe(recipe_model) -> None:
    model = recipe_model
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [(d.units, d.activation.__name__) for d in dense] == [(512, "relu"), (10, "softmax")]
    assert dense[0].kernel.shape == (3072, 512)  # the recipe's input_shape=(3072,)
    assert model.count_params() == 3072 * 512 + 512 + 512 * 10 + 10
    assert model.optimizer.__class__.__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001)
    assert model.loss == "categorical_crossentropy"
    assert model.inputs[0].dtype == "uint8"


def test_model_scales_raw_uint8_images_itself(recipe_model) -> None:
    """Scaling and flattening are layers: a uint8 image of 255s is seen as 1.0 by the first Dense."""
    model = recipe_model
    first_dense = model.get_layer("hidden_1")
    images = np.full((1, 32, 32, 3), 255, dtype=np.uint8)
    import keras

    seen = keras.Model(model.inputs, model.get_layer("flatten").output)(images)
    assert np.allclose(np.asarray(seen), 1.0) and first_dense.input.shape[-1] == 3072
    probabilities = np.asarray(model(images))
    assert probabilities.shape == (1, 10) and probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_saved_model_loads_back_compiled(recipe_model, tmp_path: Path) -> None:
    save_model(recipe_model, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert loaded.loss == "categorical_crossentropy" and loaded.optimizer.__class__.__name__ == "Adam"
    for a, b in zip(recipe_model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"], "no temporary files left behind"


def test_build_and_compile_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    """Keras stamps dates and object ids into .keras files; ours must not change between processes."""
    outputs = []
    for run in ("a", "b"):
        work = tmp_path / run
        work.mkdir()
        shutil.copy(PROJECT / "params.yaml", work / "params.yaml")
        (work / "classes.json").write_text('["cat", "dog"]')
        subprocess.run(
            [sys.executable, "-m", "stages.build_and_compile", "classes.json", "compiled.keras", "summary.txt"],
            cwd=work, env={**tool_env(), "PYTHONPATH": str(PROJECT)}, check=True, capture_output=True,
        )
        outputs.append((work / "compiled.keras").read_bytes())
    assert outputs[0] == outputs[1]
