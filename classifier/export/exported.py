"""One way to run any of the models: `load_predictor(path)` for a .keras file, a SavedModel folder, a LiteRT
.tflite file or an .onnx file. Each Predictor takes uint8 images [N, H, W, 3] and returns float32 class
probabilities [N, classes]; `class_names` are the names the file carries (None if it carries none).

    from classifier.export.exported import load_predictor
    predictor = load_predictor("models/export/model_int8.tflite")
    probabilities = predictor.predict(images)   # images: uint8, [N, predictor.input_size, input_size, 3]

LiteRT files run on ai-edge-litert's interpreter (classifier/export/litert.py), ONNX files on onnxruntime.
No runtime sees a file before its checks pass: classifier/export/checks.py for the exported formats (a graph
that does more than infer is refused), classifier/model/checks.py for .keras files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from classifier.core.errors import StageError
from classifier.export.checks import check_exported
from classifier.model.checks import check_model_file

CHUNK = 256  # images per call into the runtime, so a big batch never needs all its activations at once
KINDS = "a .keras file, a SavedModel folder, a .tflite or an .onnx file"


class Predictor:
    """A model file's classifier. `format` is keras, saved_model, litert or onnx; `native` the runtime's own
    object (the Keras model, the loaded SavedModel, the LiteRT runner or the onnxruntime session)."""

    def __init__(
        self,
        path: Path,
        format: str,
        input_size: int,
        num_classes: int,
        run: Callable[[np.ndarray], Any],
        native: Any,
        class_names: list[str] | None = None,
    ):
        self.path, self.format, self.native = path, format, native
        self.input_size, self.num_classes = input_size, num_classes
        self.class_names = class_names
        self._run = run

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        shape = (self.input_size, self.input_size, 3)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
            raise StageError(
                f"{self.path}: expected uint8 images of shape [N, {', '.join(map(str, shape))}], "
                f"got {images.dtype} {list(images.shape)}"
            )
        if len(images) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        chunks = [np.asarray(self._run(images[i : i + CHUNK])) for i in range(0, len(images), CHUNK)]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    # Keras' names for the same things, so code written for a Keras model (classifier/predict.py) takes any.
    @property
    def input_shape(self) -> tuple[None, int, int, int]:
        return (None, self.input_size, self.input_size, 3)

    @property
    def output_shape(self) -> tuple[None, int]:
        return (None, self.num_classes)

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)

    def __repr__(self) -> str:
        return f"<{self.format} predictor {self.path}: {self.input_size}px, {self.num_classes} classes>"


def check_model(path: str | os.PathLike) -> None:
    """Raise StageError `<path>: <what is wrong>` unless `path` is a model file or folder `load_predictor`
    takes and its checks accept. Only a SavedModel's check starts TensorFlow (it parses the graph with
    TensorFlow's protobufs), so a bad .keras, .tflite or .onnx file is one line in about a second."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path}: model file not found")  # as classifier.model.saving says it
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        raise StageError(f"{path}: a folder without saved_model.pb is not a SavedModel")
    if path.is_file() and path.suffix.lower() == ".keras":
        check_model_file(path)
    elif path.is_file() and path.suffix.lower() not in (".tflite", ".onnx"):
        raise StageError(f"{path}: not a model file this can run (expected {KINDS})")
    check_exported(path)  # before TensorFlow, onnxruntime or LiteRT reads a byte of it


def load_predictor(path: str | os.PathLike, threads: int | None = None) -> Predictor:
    """The Predictor for a model file or folder, by what it is; a StageError names the path otherwise.
    `threads` caps the runtime's CPU threads (None: the runtime's default)."""
    path = Path(path)
    check_model(path)
    if path.is_dir():
        return _saved_model(path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        # TensorFlow's threads are process-wide: classifier.model.runtime.configure_tensorflow
        return _keras(path)
    if suffix == ".tflite":
        return _litert(path, threads)
    return _onnx(path, threads)


def _keras(path: Path) -> Predictor:
    from classifier.model.saving import load_model

    model = load_model(path)
    return Predictor(
        path, "keras", model.input_shape[1], model.output_shape[-1], model.predict_on_batch, model
    )


def _saved_model(path: Path) -> Predictor:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures["serving_default"]
    except Exception as error:  # a corrupt file, or no serving_default signature
        raise StageError(
            f"{path}: not a loadable SavedModel ({' '.join(str(error).split())[:200]})"
        ) from None
    ((name, spec),) = serve.structured_input_signature[1].items()
    output_name, output = next(iter(serve.structured_outputs.items()))
    if spec.dtype != tf.uint8 or spec.shape.rank != 4:
        raise StageError(f"{path}: serving_default takes {spec.dtype.name} {spec.shape}, not uint8 images")
    labels = Path(path) / "assets" / "labels.txt"
    classes = labels.read_text(encoding="utf-8").splitlines() if labels.is_file() else None

    def run(images: np.ndarray) -> Any:
        return serve(**{name: tf.constant(images)})[output_name].numpy()

    return Predictor(path, "saved_model", int(spec.shape[1]), int(output.shape[-1]), run, loaded, classes)


def _litert(path: Path, threads: int | None) -> Predictor:
    from classifier.export.litert import Runner, make_interpreter, read_labels

    runner = Runner(make_interpreter(path, threads))
    shape = runner.input_shape
    if len(shape) != 4 or shape[3] != 3:
        raise StageError(f"{path}: the model takes {list(shape)}, not images [N, H, W, 3]")
    return Predictor(
        path, "litert", shape[1], runner.num_classes, runner, runner, read_labels(path.read_bytes())
    )


def _onnx(path: Path, threads: int | None) -> Predictor:
    import onnxruntime

    options = onnxruntime.SessionOptions()  # no custom op libraries registered: standard ops only
    if threads:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise StageError(
            f"{path}: not a loadable ONNX model ({' '.join(str(error).split())[:200]})"
        ) from None
    (image,), output = session.get_inputs(), session.get_outputs()[0]
    labels = session.get_modelmeta().custom_metadata_map.get("labels")

    def run(images: np.ndarray) -> Any:
        return session.run([output.name], {image.name: images})[0]

    return Predictor(
        path,
        "onnx",
        int(image.shape[1]),
        int(output.shape[-1]),
        run,
        session,
        labels.splitlines() if labels else None,
    )
