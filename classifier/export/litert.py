"""LiteRT (.tflite) models from a SavedModel, float32 and full-integer int8 (uint8 input), and running them.

The converter is `tf.lite.TFLiteConverter.from_saved_model` (TFLiteConverterV2 in TF 2.21, not deprecated;
only TensorFlow's `tf.lite.Interpreter` is). Keras 3.15's `model.export(format="litert")` takes the same
path (ExportArchive -> SavedModel -> TFLiteConverter.from_saved_model), but from a SavedModel of its own
whose bytes vary run to run, and with SELECT_TF_OPS allowed: a model that needed one would silently depend
on the Flex delegate, which the ai-edge-litert runtime does not ship. We convert the byte-stable SavedModel
of classifier/export/formats.py and allow TFLite's built-in ops only, so conversion fails loudly instead.

The int8 model is converted from a SavedModel whose input is float32 pixel values (0..255): the converter
can then quantize the input itself (and make it uint8) instead of leaving a float CAST in front of the
integer graph. Its input tensor is then set to scale 1, zero point 0: the raw uint8 pixels go in as they
are, and the first op (QUANTIZE) requantizes them to the calibrated int8 range. The output is uint8 too
(probabilities in steps of 1/256), so every op and tensor is integer.

Class names ride in each file as TFLite metadata named `labels` (one name per line, like labels.txt),
readable without TensorFlow (read_labels).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from classifier.compat import litert_op_outputs
from classifier.core.errors import StageError

LABELS_METADATA = "labels"


def convert(
    saved_model: str | os.PathLike, calibration: Callable[[], Iterator[list[np.ndarray]]] | None = None
) -> bytes:
    """A .tflite model of the SavedModel's serving signature: float32, or full-integer int8 if `calibration`
    (a generator function yielding [one float32 image batch]) is given."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if calibration is None:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    else:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    try:
        return bytes(converter.convert())
    except Exception as error:  # the converter raises ConverterError, ValueError, RuntimeError ...
        first = " ".join(str(error).split())[:300]
        raise StageError(f"LiteRT conversion failed: {first}") from None


def calibration_batches(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The representative dataset: one image at a time, as float32 pixel values."""

    def batches() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [image[None].astype(np.float32)]

    return batches


def calibration_sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` training images (all of them if there are fewer), drawn without replacement, seeded."""
    count = min(count, len(images))
    return images[np.sort(np.random.default_rng(seed).choice(len(images), size=count, replace=False))]


def finish(tflite: bytes, classes: list[str], raw_pixel_input: bool = False) -> bytes:
    """Add the class names as metadata; with `raw_pixel_input`, make the uint8 input take raw pixels
    (scale 1, zero point 0). Packing the flatbuffer again is deterministic: same model, same bytes."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite), 0))
    if raw_pixel_input:
        graph = model.subgraphs[0]
        tensor = graph.tensors[graph.inputs[0]]
        if tensor.type != schema.TensorType.UINT8 or tensor.quantization is None:
            raise StageError("LiteRT int8 conversion: the input is not a quantized uint8 tensor")
        tensor.quantization.scale, tensor.quantization.zeroPoint = [1.0], [0]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(("\n".join(classes) + "\n").encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = LABELS_METADATA, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != LABELS_METADATA] + [entry]
    builder = flatbuffers.Builder(len(tflite) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_labels(tflite: bytes) -> list[str] | None:
    """The class names in a .tflite file's `labels` metadata, or None. Needs only the flatbuffers package
    and a schema module (TensorFlow's, or ai-edge-litert's)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(tflite), 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode() == LABELS_METADATA:
            data = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy()
            return bytes(data).decode().splitlines()
    return None


def make_interpreter(path: str | os.PathLike, threads: int | None = None) -> Any:
    """A LiteRT interpreter for a .tflite file.

    ai-edge-litert (the LiteRT runtime an app would ship, without TensorFlow) if it is installed; else
    TensorFlow's built-in tf.lite.Interpreter, which gives the same numbers but is deprecated in TF 2.21
    (a warning on every use).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the lock installs ai-edge-litert
        import warnings

        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        Interpreter = tf.lite.Interpreter
    try:
        # Built-in kernels only: no custom-op registerers, so a custom op never finds code to run.
        return Interpreter(model_path=str(path), num_threads=threads)
    except ValueError as error:
        raise StageError(f"{path}: not a LiteRT model ({' '.join(str(error).split())[:200]})") from None


class Runner:
    """Runs a one-input, one-output image classifier: uint8 images in, float probabilities out, quantizing
    and dequantizing as the tensors' own scale and zero point say (identity for the raw-pixel input)."""

    def __init__(self, interpreter: Any):
        self.interpreter = interpreter
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]
        self.batch = -1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape_signature"])

    @property
    def num_classes(self) -> int:
        return int(self.output["shape_signature"][-1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [len(images), *self.input_shape[1:]])
            self.interpreter.allocate_tensors()
            self.batch = len(images)
        self.interpreter.set_tensor(self.input["index"], self._quantized(images))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        if out.dtype != np.float32:
            out = (out.astype(np.float32) - zero) * (scale or 1.0)
        return out

    def _quantized(self, images: np.ndarray) -> np.ndarray:
        dtype, (scale, zero) = self.input["dtype"], self.input["quantization"]
        if dtype == np.float32:
            return images.astype(np.float32)
        if (scale, zero) in ((0.0, 0), (1.0, 0)) and dtype == np.uint8:
            return images
        info = np.iinfo(dtype)
        return np.clip(np.round(images / scale + zero), info.min, info.max).astype(dtype)


def tensor_types(path: str | os.PathLike) -> dict[str, set[str]]:
    """The element types of a model's input, output, weights (constant tensors) and activations: for tests
    and docs, e.g. {'input': {'uint8'}, 'weights': {'int8', 'int32'}, ...}."""
    interpreter = make_interpreter(path)
    details = interpreter.get_tensor_details()
    inputs = {d["index"] for d in interpreter.get_input_details()}
    outputs = {d["index"] for d in interpreter.get_output_details()}
    op_outputs = litert_op_outputs(interpreter)
    kinds: dict[str, set[str]] = {"input": set(), "output": set(), "weights": set(), "activations": set()}
    for d in details:
        name = np.dtype(d["dtype"]).name
        if d["index"] in inputs:
            kinds["input"].add(name)
        elif d["index"] in outputs:
            kinds["output"].add(name)
        elif d["index"] in op_outputs:
            kinds["activations"].add(name)
        else:
            kinds["weights"].add(name)
    return kinds
