"""classifier/model/build.py and model_files.py: defaults are the classic recipe, the options beyond it, and saved models that load back byte-identically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from classifier.model.build import build_model, compile_model
from classifier.model.runtime import configure_tensorflow
from classifier.model.saving import load_model, save_model

from conftest import PROJECT
from conftest import build_tiny_model as build


@pytest.fixture(scope="module")
def recipe_model():
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    configure_tensorflow(seed=params["seed"])
    model = build_model(
        params["preprocess"]["image_size"], 10, params["model"]["hidden_units"], params["model"]["activation"]
    )
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


@pytest.fixture(scope="module", autouse=True)
def seeded() -> None:
    configure_tensorflow(seed=3)


def layer_types(model) -> list[str]:
    return [layer.__class__.__name__ for layer in model.layers]


@pytest.mark.parametrize(
    "normalization, norm_layer",
    [("none", None), ("batch", "BatchNormalization"), ("layer", "LayerNormalization")],
)
def test_normalization_follows_each_hidden_layer(normalization: str, norm_layer: str | None) -> None:
    model = build([16, 16], normalization=normalization)
    types = layer_types(model)
    assert types.count("Dense") == 3
    assert model.output_shape == (None, 3)
    if norm_layer is None:
        assert "BatchNormalization" not in types and "LayerNormalization" not in types
        assert all(layer.use_bias for layer in model.layers if layer.__class__.__name__ == "Dense")
    else:
        assert types.count(norm_layer) == 2
        # Dense -> norm -> activation, per hidden layer; the norm's shift replaces the Dense bias.
        first = types.index("Dense")
        assert types[first : first + 3] == ["Dense", norm_layer, "Activation"]
        assert not model.get_layer("hidden_1").use_bias


def test_residual_connects_only_layers_as_wide_as_their_input() -> None:
    model = build([32, 32, 16, 16], residual=True)
    adds = [layer.name for layer in model.layers if layer.__class__.__name__ == "Add"]
    # hidden_1's input is the 192-wide image; hidden_3 narrows 32 -> 16.
    assert adds == ["hidden_2_residual", "hidden_4_residual"]
    assert not [layer for layer in build([32, 32]).layers if layer.__class__.__name__ == "Add"]


def test_residual_block_adds_its_input() -> None:
    """With hidden_2's kernel and bias at zero, its ReLU outputs 0, so the block passes its input through."""
    model = build([16, 16], residual=True)
    hidden_2 = model.get_layer("hidden_2")
    hidden_2.set_weights([np.zeros_like(w) for w in hidden_2.get_weights()])
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    import keras

    block_input = keras.Model(model.input, model.get_layer("hidden_1").output)(images)
    block_output = keras.Model(model.input, model.get_layer("hidden_2_residual").output)(images)
    np.testing.assert_array_equal(np.asarray(block_output), np.asarray(block_input))


def test_inverted_bottleneck_blocks_widen_project_back_and_add_their_input() -> None:
    """x + W2 act(W1 norm(x)) after the hidden layers, each block as wide as its input, then one last norm."""
    import keras

    model = build([16], normalization="layer", bottleneck_blocks=2, bottleneck_expansion=3)
    assert model.get_layer("block_1_expand").units == 48 and model.get_layer("block_2_project").units == 16
    names = [layer.name for layer in model.layers]
    assert names.index("block_2_residual") < names.index("blocks_norm") < names.index("class_probabilities")
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    x, normalised, branch, out = keras.Model(
        model.input,
        [
            model.get_layer(name).output
            for name in ("hidden_1_relu", "block_1_layer_norm", "block_1_project", "block_1_residual")
        ],  # fmt: skip
    )(images)
    assert not np.allclose(np.asarray(normalised), np.asarray(x)), "the branch sees x normalised"
    np.testing.assert_allclose(np.asarray(out), np.asarray(x) + np.asarray(branch), rtol=1e-6)
    assert not [layer for layer in build([16]).layers if layer.name.startswith("block")]


def test_dropout_is_active_in_training_only() -> None:
    model = build([64], dropout=0.5, seed=1)
    assert model.get_layer("hidden_1_dropout").rate == 0.5
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(model(images)))
    assert not np.array_equal(np.asarray(model(images, training=True)), np.asarray(model(images)))
    assert "Dropout" not in layer_types(build([64]))


def build_everything(seed: int):
    import keras

    from classifier.model.build import build_model, compile_model

    keras.backend.clear_session()  # as in a fresh process: layer and optimizer names count from 0 again
    configure_tensorflow(seed=seed)
    model = build_model(
        8, 3, [16, 16], "relu", normalization="batch", dropout=0.25, residual=True, seed=seed, bottleneck_blocks=1,
        bottleneck_expansion=2,
    )  # fmt: skip
    compile_model(model, "adamw", 0.002, "categorical_crossentropy", weight_decay=0.05, label_smoothing=0.1)
    return model


def test_new_options_survive_save_and_load_and_save_byte_identically(tmp_path: Path) -> None:
    model = build_everything(5)
    save_model(model, tmp_path / "a.keras")
    loaded = load_model(tmp_path / "a.keras")
    assert layer_types(loaded) == layer_types(model)
    assert loaded.optimizer.weight_decay == pytest.approx(0.05)
    assert loaded.loss.label_smoothing == pytest.approx(0.1)
    assert loaded.get_layer("hidden_2_dropout").seed == 7  # the params seed + the layer's number
    save_model(build_everything(5), tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()


def test_weight_decay_shrinks_weights_apart_from_the_gradient() -> None:
    """A zero loss gives zero gradients: only the decoupled decay moves the weights, by lr * decay."""
    import keras

    from classifier.model.build import build_model, compile_model

    model = build_model(8, 3, [4], "relu")
    compile_model(model, "adam", 0.1, "categorical_crossentropy", weight_decay=0.5)
    kernel = model.get_layer("hidden_1").kernel
    before = np.asarray(kernel).copy()
    model.optimizer.apply_gradients([(keras.ops.zeros_like(v), v) for v in model.trainable_variables])
    np.testing.assert_allclose(np.asarray(kernel), before * (1 - 0.1 * 0.5), rtol=1e-5)


def test_label_smoothing_softens_the_targets() -> None:
    from classifier.model.build import compile_model

    model = build([4])
    compile_model(model, "adam", 0.001, "categorical_crossentropy", label_smoothing=0.3)
    one_hot = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    confident = np.array([[0.0001, 0.9998, 0.0001]], dtype=np.float32)
    smoothed = float(model.loss(one_hot, confident))
    # Against (1 - 0.3) * one-hot + 0.3 / 3 the confident prediction is penalised, not rewarded.
    expected = -(0.8 * np.log(0.9998) + 2 * 0.1 * np.log(0.0001))
    assert smoothed == pytest.approx(expected, rel=1e-3)
