"""classifier/export/formats.py, litert.py, exported.py, parity.py: every format of a tiny trained model matches it,
the int8 model is integer through and through, every file of the classic and a better-recipe model passes
classifier/export/checks.py, exports are byte-identical run to run, bad export params and
bad files are one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from classifier.core.errors import StageError
from classifier.core.files import atomic_folder
from classifier.core.params import load_params
from classifier.export import litert
from classifier.export.checks import check_exported
from classifier.export.exported import load_predictor
from classifier.export.formats import LABELS, export_all
from classifier.export.parity import check_float_agreement, parity

from conftest import PROJECT, learnable_images

CLASSES = ["airplane", "automobile", "bird"]
FLOAT_FORMATS = ["saved_model", "litert_float32", "onnx"]


def trained(root: Path, model, images: np.ndarray, labels: np.ndarray) -> None:
    import keras

    from classifier.model.saving import save_model

    model.fit(images[:270], keras.utils.to_categorical(labels[:270], 3), epochs=3, batch_size=30, verbose=0)
    save_model(model, root / "model.keras")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-class MLP trained for 3 epochs on learnable images, saved as .keras and exported once."""
    from classifier.model.build import build_model, compile_model
    from classifier.model.runtime import configure_tensorflow

    root = tmp_path_factory.mktemp("export")
    configure_tensorflow(seed=7)  # no threads: TensorFlow may already run in this test process
    labels = np.arange(330) % 3
    images = learnable_images(labels, seed=11)
    model = build_model(32, 3, [24], "relu")
    compile_model(model, "adam", 0.001, "categorical_crossentropy")
    trained(root, model, images, labels)
    calibration = litert.calibration_sample(images[:270], 100, seed=7)
    paths = export_all(model, CLASSES, calibration, root / "first")
    return {
        "root": root,
        "model": model,
        "calibration": calibration,
        "paths": paths,
        "test": (images[270:], labels[270:]),
        "reference": model.predict(images[270:], verbose=0),
    }


@pytest.mark.parametrize("name", [*FLOAT_FORMATS, "litert_int8"])
def test_each_format_gives_the_keras_model_s_probabilities(tiny: dict, name: str) -> None:
    images, labels = tiny["test"]
    predictor = load_predictor(tiny["paths"][name], threads=2)
    assert (predictor.input_size, predictor.num_classes) == (32, 3)
    probabilities = predictor.predict(images)
    assert probabilities.shape == (60, 3) and probabilities.dtype == np.float32
    scores = parity(tiny["reference"], probabilities, labels)
    if name in FLOAT_FORMATS:
        assert scores["top1_agreement"] == 1.0 and scores["max_abs_probability_diff"] < 1e-5, scores
    else:  # uint8 probabilities come in steps of 1/256
        assert scores["top1_agreement"] >= 0.95 and scores["max_abs_probability_diff"] < 0.05, scores
    assert scores["test_accuracy"] > 0.9, "the classes differ by colour: the tiny model learned them"


@pytest.fixture(scope="module")
def better(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model like recipes/better-mlp.yaml's (3 hidden layers, batch norm, dropout, residual, adamw), with a
    PCA whitening layer and an inverted-bottleneck block, trained for 3 epochs, wrapped for test-time augmentation
    (model.flip_average and model.shift_average: 18 views) and exported once."""
    from classifier.model.build import build_model, compile_model
    from classifier.model.runtime import configure_tensorflow
    from classifier.model.view_average import with_view_average
    from classifier.model.whitening import set_whitening

    root = tmp_path_factory.mktemp("export_better")
    configure_tensorflow(seed=7)
    labels = np.arange(330) % 3
    images = learnable_images(labels, seed=11)
    model = build_model(
        32, 3, [16, 16, 16], "relu", "batch", dropout=0.25, residual=True, seed=7, whitening=48,
        bottleneck_blocks=1, bottleneck_expansion=2,
    )  # fmt: skip
    set_whitening(model, images[:270], 0.01)
    compile_model(model, "adamw", 0.002, "categorical_crossentropy", weight_decay=0.1, label_smoothing=0.1)
    trained(root, model, images, labels)
    model = with_view_average(model, flip=True, shift=2)
    calibration = litert.calibration_sample(images[:270], 100, seed=7)
    paths = export_all(model, CLASSES, calibration, root / "export")
    return {
        "paths": paths,
        "test": (images[270:], labels[270:]),
        "reference": model.predict(images[270:], verbose=0),
    }


@pytest.mark.parametrize("recipe", ["tiny", "better"])
def test_every_exported_file_passes_the_checks_and_loads_through_them(recipe: str, request) -> None:
    exported = request.getfixturevalue(recipe)
    for name, path in exported["paths"].items():
        check_exported(path)  # raises on a refusal; load_predictor runs the same check first
        probabilities = load_predictor(path).predict(exported["test"][0])
        agreement = (probabilities.argmax(1) == exported["reference"].argmax(1)).mean()
        if name in FLOAT_FORMATS:
            assert agreement == 1.0 and np.abs(probabilities - exported["reference"]).max() < 1e-5, name
        else:
            assert agreement >= 0.9, name


def test_the_keras_file_loads_as_a_predictor_too(tiny: dict) -> None:
    images, _ = tiny["test"]
    predictor = load_predictor(tiny["root"] / "model.keras")
    assert predictor.format == "keras" and predictor.class_names is None
    np.testing.assert_allclose(predictor.predict(images), tiny["reference"], atol=1e-6)
    # Keras' own names work too, so code written for a Keras model takes any predictor.
    assert predictor.input_shape == (None, 32, 32, 3) and predictor.output_shape == (None, 3)
    assert np.array_equal(predictor.predict_on_batch(images[:2]), predictor.predict(images[:2]))


def test_int8_model_takes_raw_uint8_pixels_and_is_integer_throughout(tiny: dict) -> None:
    path = tiny["paths"]["litert_int8"]
    types = litert.tensor_types(path)
    assert types["input"] == {"uint8"} and types["output"] == {"uint8"}
    assert "int8" in types["weights"] and types["weights"] <= {"int8", "int32"}  # int32: biases, shapes
    assert types["activations"] <= {"int8", "int32"}
    runner = litert.Runner(litert.make_interpreter(path))
    assert runner.input["quantization"] == (1.0, 0), "raw pixels in, no scaling by the app"
    assert runner.output["quantization"] == (1 / 256, 0)
    float_types = litert.tensor_types(tiny["paths"]["litert_float32"])
    assert float_types["input"] == {"uint8"} and "float32" in float_types["weights"]


def test_class_names_travel_with_every_format(tiny: dict) -> None:
    for name, path in tiny["paths"].items():
        assert load_predictor(path).class_names == CLASSES, name
    folder = tiny["paths"]["saved_model"].parent
    assert (folder / LABELS).read_text() == "airplane\nautomobile\nbird\n"
    assert (tiny["paths"]["saved_model"] / "assets" / LABELS).read_text() == "airplane\nautomobile\nbird\n"


def test_saved_model_serving_signature_takes_uint8_images(tiny: dict) -> None:
    import tensorflow as tf

    serve = tf.saved_model.load(str(tiny["paths"]["saved_model"])).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
    assert list(serve.structured_outputs) == ["probabilities"]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_exports_are_byte_identical_run_to_run(tiny: dict) -> None:
    # The same process has traced more functions since: names numbered by TF and tf2onnx moved on.
    export_all(tiny["model"], CLASSES, tiny["calibration"], tiny["root"] / "second")
    first, second = files_of(tiny["root"] / "first"), files_of(tiny["root"] / "second")
    assert list(first) == list(second)
    assert [name for name in first if first[name] != second[name]] == []
    assert "saved_model/fingerprint.pb" in first and "model.onnx" in first


def test_atomic_folder_keeps_the_old_folder_if_the_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one"
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temporary folder left behind"


def test_calibration_sample_is_seeded_and_capped() -> None:
    images = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
    first, again = litert.calibration_sample(images, 10, 3), litert.calibration_sample(images, 10, 3)
    assert np.array_equal(first, again) and len(np.unique(first)) == 10
    assert not np.array_equal(first, litert.calibration_sample(images, 10, 4))
    assert len(litert.calibration_sample(images, 500, 3)) == 50


def test_float_agreement_below_99_9_percent_is_one_line() -> None:
    fine = {"saved_model": {"top1_agreement": 0.999}, "litert_int8": {"top1_agreement": 0.5}}
    check_float_agreement(fine, 1000, "see m.json")  # int8 is reported, not held to the floor
    with pytest.raises(StageError) as raised:
        check_float_agreement({**fine, "onnx": {"top1_agreement": 0.998}}, 1000, "see m.json")
    assert str(raised.value) == (
        "export: onnx agrees with the Keras model on 99.80% of the 1000 test images (2 differ); "
        "a float export must reach 99.9% (see m.json)"
    )


def test_latency_is_measured_on_demand_for_any_model(tiny: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    from classifier.export import parity

    models = [str(tiny["root"] / "model.keras"), *map(str, tiny["paths"].values())]
    out = tmp_path / "latency.json"
    # No --threads: TensorFlow's thread pools are set once per process, and this one has run already.
    monkeypatch.setattr("sys.argv", ["parity", *models, "--runs", "3", "--json", str(out)])
    parity.main()
    timings = json.loads(out.read_text())
    assert (
        timings["runs"] == 3 and timings["threads"] is None and sorted(timings["one_image"]) == sorted(models)
    )
    assert all(0 < entry["median_ms"] < 1000 for entry in timings["one_image"].values())
    assert "model_int8.tflite: " in capsys.readouterr().out


@pytest.mark.parametrize(
    "path, expected",
    [
        ("missing.tflite", "missing.tflite: model file not found"),
        ("model.pt", "model.pt: not a model file this can run (expected a .keras file"),
        ("folder", "folder: a folder without saved_model.pb is not a SavedModel"),
        ("junk.tflite", "junk.tflite: not a LiteRT model"),
        ("junk.onnx", "junk.onnx: not a loadable ONNX model"),
    ],
)
def test_load_predictor_refuses_what_it_cannot_run_in_one_line(
    tmp_path: Path, monkeypatch, path: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("model.pt").write_bytes(b"x")
    Path("folder").mkdir()
    Path("junk.tflite").write_bytes(b"not a flatbuffer at all")
    Path("junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(StageError) as raised:
        load_predictor(path)
    assert str(raised.value).startswith(expected) and "\n" not in str(raised.value)


def test_predict_refuses_images_of_the_wrong_type_or_shape(tiny: dict) -> None:
    predictor = load_predictor(tiny["paths"]["litert_int8"])
    with pytest.raises(
        StageError, match=r"expected uint8 images of shape \[N, 32, 32, 3\], got float32 \[2, 32, 32, 3\]"
    ):
        predictor.predict(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(StageError, match=r"got uint8 \[2, 28, 28, 3\]"):
        predictor.predict(np.zeros((2, 28, 28, 3), np.uint8))
    assert predictor.predict(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 3)


DEFAULTS = yaml.safe_load((PROJECT / "params.yaml").read_text())


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda e: e.update(calibration_images=0),
            "export.calibration_images = 0 is not accepted; expected an integer from 1 to 1000000",
        ),
        (lambda e: e.update(calibration_images="500"), "export.calibration_images = '500' is not accepted"),
        (
            lambda e: e.update(calibration_images=2.5),
            "export.calibration_images = 2.5 is not accepted; expected an integer",
        ),
        (
            lambda e: e.update(calibration=e.pop("calibration_images")),
            "unknown key 'export.calibration'; did you mean 'export.calibration_images'?",
        ),
        (
            lambda e: e.pop("calibration_images"),
            "missing key 'export.calibration_images' (expected an integer from 1 to 1000000)",
        ),
        (lambda e: e.update(latency_runs=200), "unknown key 'export.latency_runs' (accepted keys here:"),
    ],
    ids=["zero", "quoted", "float", "typo", "missing", "unknown"],
)
def test_bad_export_params_are_one_line_errors(tmp_path: Path, monkeypatch, change, expected: str) -> None:
    params = copy.deepcopy(DEFAULTS)
    change(params["export"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError) as raised:
        load_params()
    assert str(raised.value).startswith(f"params.yaml: {expected}") and "\n" not in str(raised.value)
