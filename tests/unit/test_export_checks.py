"""classifier/export/checks.py: hostile SavedModel, ONNX and LiteRT files (tests/hostile_models.py) are refused in
one line by load_predictor and by every command that loads through it (predict, parity), and no trap goes off;
a TensorFlow 1 SavedModel and one whose functions could be swapped are refused; every model the params can
build exports a SavedModel the allow-list accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.core.errors import StageError
from classifier.core.params_schema import ACTIVATIONS
from classifier.export.checks import check_exported
from classifier.export.exported import load_predictor

import hostile_models as hostile
from conftest import MARKER, PROJECT, tool_env

# file -> what its one error line must say after "<path>: refused: "
REFUSED = {
    "writes_a_file": "op WriteFile (node 'WriteFile' in function __inference_serve_",
    "calls_python": "op EagerPyFunc (node 'EagerPyFunc' in function __inference_serve_",
    "reads_a_file": "op ReadFile (node 'ReadFile' in function __inference_serve_",
    "models/custom_domain.onnx": "op Exec of the custom domain 'com.example.evil' needs code from outside the file",
    "models/data_outside.onnx": "the weights 'kernel' are read from '../secret.bin', outside the model's folder",
    "models/data_absolute.onnx": "outside the model's folder",
    "custom_op.tflite": "custom op 'BesselI0e' needs a kernel from outside the file",
}


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every hostile file under one folder; the SavedModels' traps write markers/<name> when they run."""
    from classifier.model.runtime import configure_tensorflow

    configure_tensorflow(seed=0)
    root = tmp_path_factory.mktemp("hostile")
    (root / "markers").mkdir()
    (root / "models").mkdir()
    secret = root / "secret.bin"  # the size of the weights it stands in for, so onnxruntime would read it
    secret.write_bytes(np.ones((hostile.SIZE * hostile.SIZE * 3, hostile.CLASSES), np.float32).tobytes())
    hostile.saved_model_benign(root / "benign")
    hostile.saved_model_writing(root / "writes_a_file", root / "markers" / "writes_a_file")
    hostile.saved_model_calling_python(root / "calls_python", root / "markers" / "calls_python")
    hostile.saved_model_reading(root / "reads_a_file", secret)
    hostile.onnx_custom_domain(root / "models/custom_domain.onnx")
    hostile.onnx_external_data_outside(root / "models/data_outside.onnx", secret)
    hostile.onnx_external_data_outside(root / "models/data_absolute.onnx", secret, absolute=True)
    hostile.litert_custom_op(root / "custom_op.tflite")
    return root


def markers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "markers").iterdir())


@pytest.mark.parametrize("name", ["writes_a_file", "calls_python"])
def test_the_saved_model_traps_are_armed(hostile_files: Path, name: str) -> None:
    # Loaded and called without the checks, the file does what it says; the marker is removed again so that
    # the other tests start from a clean folder.
    import tensorflow as tf

    serve = tf.saved_model.load(str(hostile_files / name)).signatures["serving_default"]
    probabilities = serve(images=tf.zeros([2, 32, 32, 3], tf.uint8))["probabilities"].numpy()
    assert probabilities.shape == (2, 10) and np.allclose(probabilities.sum(axis=1), 1)
    assert markers(hostile_files) == [name]
    (hostile_files / "markers" / name).unlink()


@pytest.mark.parametrize("name", list(REFUSED))
def test_load_predictor_refuses_a_hostile_file_in_one_line(hostile_files: Path, name: str) -> None:
    path = hostile_files / name
    with pytest.raises(StageError) as raised:
        load_predictor(path)
    message = str(raised.value)
    assert message.startswith(f"{path}") and ": refused: " in message and "\n" not in message, message
    assert REFUSED[name] in message, message
    assert markers(hostile_files) == [], "code from the model file ran"


def test_the_same_model_without_the_side_effect_loads_and_predicts(hostile_files: Path) -> None:
    probabilities = load_predictor(hostile_files / "benign").predict(np.zeros((2, 32, 32, 3), np.uint8))
    assert probabilities.shape == (2, 10) and np.allclose(probabilities.sum(axis=1), 1)


def edited_saved_model(source: Path, target: Path, edit) -> Path:
    """A copy of the SavedModel folder `source` whose saved_model.pb went through `edit(proto)`."""
    from tensorflow.core.protobuf import saved_model_pb2

    shutil.copytree(source, target)
    proto = saved_model_pb2.SavedModel.FromString((target / "saved_model.pb").read_bytes())
    edit(proto)
    (target / "saved_model.pb").write_bytes(proto.SerializeToString())
    return target


def swappable(proto) -> None:
    for function in proto.meta_graphs[0].graph_def.library.function:
        function.attr["api_implements"].s = b"serve"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda proto: proto.meta_graphs[0].ClearField("object_graph_def"),
            "refused: a TensorFlow 1 SavedModel",
        ),
        (swappable, "declares api_implements, so TensorFlow could run another function in its place"),
    ],
    ids=["tensorflow_1", "api_implements"],
)
def test_a_saved_model_that_could_run_unchecked_graphs_is_refused(
    hostile_files: Path, tmp_path: Path, edit, expected: str
) -> None:
    path = edited_saved_model(hostile_files / "benign", tmp_path / "edited", edit)
    with pytest.raises(StageError, match=expected):
        load_predictor(path)


def test_the_parity_command_refuses_through_the_same_check(hostile_files: Path, monkeypatch) -> None:
    from classifier.export import parity

    path = hostile_files / "writes_a_file"
    monkeypatch.setattr(sys, "argv", ["parity", str(path), "--runs", "1"])
    with pytest.raises(StageError, match=r"saved_model\.pb: refused: op WriteFile"):
        parity.main()
    assert markers(hostile_files) == []


def test_predict_refuses_the_saved_model_that_writes_a_file(hostile_files: Path, tmp_path: Path) -> None:
    # The case: a SavedModel with the project's serving signature, given to the command.
    Image.new("RGB", (40, 30), (200, 30, 10)).save(tmp_path / "photo.png")
    (tmp_path / "classes.json").write_text(json.dumps([f"class {i}" for i in range(10)]))
    model = hostile_files / "writes_a_file"
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}
    command = ["-m", "classifier.predict", "photo.png", "--model", str(model), "--classes", "classes.json"]
    result = subprocess.run(
        [sys.executable, *command],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and result.stdout == "", result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {model}/saved_model.pb: refused: {errors[0].split(': refused: ')[1]}"], errors
    assert "op WriteFile" in errors[0] and "Traceback" not in result.stderr
    assert markers(hostile_files) == [] and not (tmp_path / MARKER).exists()


def test_every_model_the_params_can_build_exports_a_saved_model_the_checks_accept(tmp_path: Path) -> None:
    # One model with every activation, both normalisations, dropout and a residual connection, wrapped in
    # test-time augmentation's mirrored and shifted views: what the allow-list was derived from, so that a
    # new Keras or TensorFlow that lowers a layer differently fails here.
    import keras
    from keras import layers

    from classifier.export.formats import write_saved_model
    from classifier.model.view_average import with_view_average

    image = keras.Input(shape=(8, 8, 3), dtype="uint8")
    x = layers.Flatten()(layers.Rescaling(1.0 / 255)(image))
    x = layers.Dense(4, use_bias=False)(x)
    x = layers.Dropout(0.25)(layers.BatchNormalization()(x))
    x = layers.Add()([x, layers.LayerNormalization()(x)])
    for name in ACTIVATIONS:  # one after another: the project's models have no concatenation
        x = layers.Dense(4, activation=name)(x)
    model = with_view_average(
        keras.Model(image, layers.Dense(3, activation="softmax")(x)), flip=True, shift=2
    )
    for dtype in ("uint8", "float32"):  # float32: the int8 conversion's input
        write_saved_model(model, tmp_path / dtype, ["a", "b", "c"], dtype=dtype)
        check_exported(tmp_path / dtype)
