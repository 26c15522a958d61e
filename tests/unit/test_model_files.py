"""load_model meets every kind of bad model file with StageError `<path>: <what is wrong>`, and runs no code.

The files are made here: a real tiny model saved by save_model, then cut, corrupted or with its
config.json rewritten to ask for code (a Lambda layer's stored lambda, a function or class from a module
`evil` that writes a marker file when imported or called).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from classifier.core.errors import StageError
from classifier.model.saving import _keras_load, load_model, save_model

from conftest import EVIL, MARKER, RUNS_CODE

EVIL_FUNCTION = {
    "module": "evil",
    "class_name": "function",
    "config": "payload",
    "registered_name": "payload",
}


def rewrite(source: Path, target: Path, edit=None, drop=(), replace=None, stored=False) -> Path:
    """A copy of a .keras zip with config.json edited by `edit`, members dropped or replaced."""
    mode = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", mode) as new:
        for name in old.namelist():
            data = (replace or {}).get(name, old.read(name))
            if name == "config.json" and edit:
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            if name not in drop:
                new.writestr(name, data)
    return target


def layer(config: dict, name: str) -> dict:
    return next(item for item in config["config"]["layers"] if item["config"]["name"] == name)


def set_activation(value):
    return lambda config: layer(config, "hidden_1")["config"].update(activation=value)


def set_class(module, class_name, registered_name):
    return lambda config: layer(config, "flatten").update(
        module=module, class_name=class_name, registered_name=registered_name
    )


def named_function_lambda(config: dict) -> None:
    """The flatten layer becomes a Lambda whose function is evil.payload (saved by name, not as code)."""
    flatten = layer(config, "flatten")
    flatten.update(class_name="Lambda", module="keras.layers")
    flatten["config"] = {"name": "flatten", "trainable": True, "dtype": flatten["config"]["dtype"],
                         "function": EVIL_FUNCTION, "arguments": {}}  # fmt: skip


def flip_byte_in(path: Path, member: str, target: Path) -> Path:
    """A copy of a stored (uncompressed) zip with one byte of `member`'s data changed: a CRC error."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """good.keras, lambda.keras and evil.py; the working directory of every test below."""
    import keras

    from classifier.model.build import build_model
    from classifier.model.runtime import configure_tensorflow

    root = tmp_path_factory.mktemp("models")
    configure_tensorflow(seed=0)
    save_model(build_model(32, 3, [8], "relu"), root / "good.keras")
    with contextlib.chdir(root):
        inputs = keras.Input((4,))
        save_model(keras.Model(inputs, keras.layers.Lambda(RUNS_CODE, name="double")(inputs)), "lambda.keras")
        Path(MARKER).unlink()  # building the model called the lambda once, here in the test
    (root / "evil.py").write_text(EVIL)
    return root


@pytest.fixture
def cwd(folder, monkeypatch) -> Path:
    """In the folder, with it first on sys.path (as for `python -m`): importing `evil` would work."""
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    assert not (folder / MARKER).exists(), "code from the model file ran"
    assert "evil" not in sys.modules, "the module named in the model file was imported"


def h5_file(path: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as file:
        file["weights"] = np.zeros(3)
    return path


def zip_bomb(folder: Path, target: Path) -> Path:
    """config.json and a model.weights.h5 that inflates 300 MB of zeros from about 300 KB."""
    with (
        zipfile.ZipFile(folder / "good.keras") as good,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out,
    ):
        out.writestr("config.json", good.read("config.json"))
        with out.open("model.weights.h5", "w") as weights:
            for _ in range(300):
                weights.write(bytes(1 << 20))
    return target


BUILDERS = {
    "missing": lambda d, p: None,
    "folder": lambda d, p: p.mkdir(),
    "empty": lambda d, p: p.write_bytes(b""),
    "random bytes": lambda d, p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
    "text": lambda d, p: p.write_text("model: mlp\nlayers: 2\n"),
    "hdf5": lambda d, p: h5_file(p),
    "truncated": lambda d, p: p.write_bytes((d / "good.keras").read_bytes()[:3000]),
    "crc error": lambda d, p: flip_byte_in(
        rewrite(d / "good.keras", d / "stored.keras", stored=True), "model.weights.h5", p
    ),
    "no config.json": lambda d, p: rewrite(d / "good.keras", p, drop=["config.json"]),
    "no weights": lambda d, p: rewrite(d / "good.keras", p, drop=["model.weights.h5"]),
    "config not json": lambda d, p: rewrite(d / "good.keras", p, replace={"config.json": b"{not json"}),
    "config not a model": lambda d, p: rewrite(d / "good.keras", p, replace={"config.json": b"[1, 2]"}),
    "zip bomb": zip_bomb,
    "not named .keras": lambda d, p: shutil.copy(d / "good.keras", p),
    "lambda layer": lambda d, p: shutil.copy(d / "lambda.keras", p),
    "function outside keras": lambda d, p: rewrite(d / "good.keras", p, set_activation(EVIL_FUNCTION)),
    "lambda naming a function": lambda d, p: rewrite(d / "good.keras", p, named_function_lambda),
    "class outside keras": lambda d, p: rewrite(d / "good.keras", p, set_class("evil", "EvilLayer", "EvilLayer")),
    "registered custom object": lambda d, p: rewrite(d / "good.keras", p, set_class(None, "Thing", "evil>Thing")),
    "unknown custom class": lambda d, p: rewrite(d / "good.keras", p, set_class(None, "MyFlatten", "MyFlatten")),
    "non-modeling keras function": lambda d, p: rewrite(d / "good.keras", p, set_activation(
        {"module": "keras.utils", "class_name": "function", "config": "get_file", "registered_name": "get_file"}
    )),
    "junk weights": lambda d, p: rewrite(d / "good.keras", p, replace={"model.weights.h5": b"junk" * 100}),
    "weights of another model": lambda d, p: rewrite(
        d / "good.keras", p, lambda config: layer(config, "hidden_1")["config"].update(units=16)
    ),
}  # fmt: skip

ACCEPTED = "expected a .keras model file"
REFUSED = "refused: the model asks to run"
EXPECTED = {
    "missing": ["model file not found"],
    "folder": ["is a folder", ACCEPTED],
    "empty": ["an empty file", ACCEPTED],
    "random bytes": ["not a .keras model (unknown binary content)", ACCEPTED],
    "text": ["a text file, not a .keras model", ACCEPTED],
    "hdf5": ["an HDF5 file (the legacy Keras .h5 format), not a .keras model", ACCEPTED],
    "truncated": ["damaged .keras file: the zip archive is truncated or corrupt"],
    "crc error": ["damaged .keras file: model.weights.h5 is corrupt (CRC check failed)"],
    "no config.json": ["damaged .keras file: no config.json in the archive"],
    "no weights": ["damaged .keras file: no weights (model.weights.h5 or model.weights.npz)"],
    "config not json": ["damaged .keras file: config.json is not valid JSON"],
    "config not a model": ["config.json does not describe a Keras model"],
    "zip bomb": ["damaged .keras file: model.weights.h5 inflates 314,572,800 bytes", "decompression bomb"],
    "not named .keras": ["must be named *.keras"],
    "lambda layer": [REFUSED, "Python code stored in the file (a lambda function in Lambda layer 'double')"],
    "function outside keras": [REFUSED, "code from outside Keras (evil.payload, in Dense layer 'hidden_1')"],
    "lambda naming a function": [REFUSED, "code from outside Keras (evil.payload, in Lambda layer 'flatten')"],
    "class outside keras": [REFUSED, "code from outside Keras (evil.EvilLayer, in Functional 'mlp')"],
    "registered custom object": [REFUSED, "the custom object 'evil>Thing'", "which is not part of Keras"],
    "unknown custom class": ["refused: the model asks for the class 'MyFlatten', which is not part of Keras"],
    "non-modeling keras function": ["Keras cannot load this model", "`keras.utils.get_file` because it is not a modeling function"],
    "junk weights": ["damaged .keras file: model.weights.h5 is not an HDF5 file"],
    "weights of another model": ["Keras cannot load this model"],
}  # fmt: skip
SUFFIX = {"folder": "", "hdf5": ".h5", "not named .keras": ".zip"}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_a_bad_model_file_is_one_line_naming_it(cwd, kind):
    path = cwd / f"{kind.replace(' ', '_')}{SUFFIX.get(kind, '.keras')}"
    BUILDERS[kind](cwd, path)
    with pytest.raises(StageError) as raised:
        load_model(path)
    message = str(raised.value)
    print(f"{kind}: {message}")
    assert message.startswith(f"{path}: ")
    assert "\n" not in message and len(message) < 500, message
    for words in EXPECTED[kind]:
        assert words in message, message


CODE_ASKING = ["lambda layer", "function outside keras", "lambda naming a function", "class outside keras",
               "registered custom object"]  # fmt: skip


@pytest.mark.parametrize("kind", CODE_ASKING)
def test_keras_safe_mode_refuses_the_code_asking_files_too(cwd, kind):
    # Past our own checks, Keras (safe_mode=True) is the second wall: it refuses each one, running nothing.
    path = cwd / f"keras_{kind.replace(' ', '_')}.keras"
    BUILDERS[kind](cwd, path)
    with pytest.raises(StageError, match=r"refused|Keras cannot load this model") as raised:
        _keras_load(path)
    assert str(raised.value).startswith(f"{path}: ") and "\n" not in str(raised.value)


def test_safe_mode_stays_on_after_enable_unsafe_deserialization(cwd):
    import keras
    from keras.src.backend.common import global_state

    before = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()  # alone, it overrides keras' safe_mode=True argument
    try:
        with pytest.raises(StageError, match="Lambda"):
            _keras_load(cwd / "lambda.keras")
    finally:
        global_state.set_global_attribute("safe_mode_saving", before)


def test_the_lambda_file_does_run_code_when_safe_mode_is_off(folder, monkeypatch):
    # The proof that the file above is a real threat, and the marker a real witness.
    import keras

    monkeypatch.chdir(folder)
    keras.saving.load_model(folder / "lambda.keras", safe_mode=False)
    assert (folder / MARKER).exists()
    (folder / MARKER).unlink()


def test_a_model_with_every_option_of_the_recipe_loads(tmp_path):
    """No false alarm: normalisation, dropout, residuals, AdamW, label smoothing and a cosine schedule."""
    from classifier.model.build import build_model, compile_model
    from classifier.training.schedules import learning_rate_schedule

    model = build_model(32, 3, [8, 8], "gelu", normalization="batch", dropout=0.1, residual=True, seed=1)
    compile_model(model, "adamw", 0.001, "categorical_crossentropy", weight_decay=0.01, label_smoothing=0.1)
    model.optimizer.learning_rate = learning_rate_schedule(0.001, 3, 4, 1)
    save_model(model, tmp_path / "full.keras")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    loaded = load_model(tmp_path / "full.keras")
    np.testing.assert_allclose(loaded.predict_on_batch(images), model.predict_on_batch(images), rtol=1e-6)
