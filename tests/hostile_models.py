"""Hostile model files in every exported format, each shaped like the project's own exports (uint8 images
[N, 32, 32, 3] in, 10 probabilities out) so that only the checks of classifier/export/checks.py stand
between them and a caller. The SavedModel traps are real: loaded and called without the checks, they write
their marker (tests/unit/test_export_checks.py shows it). onnxruntime and LiteRT would also stop the others
today, but only because no custom op library is registered and onnxruntime now checks external paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SIZE, CLASSES = 32, 10


def _saved_model(folder: Path, side_effect: Callable[[Any], Any]) -> Path:
    """A SavedModel whose serving_default returns plausible probabilities after `side_effect(images)`."""
    import tensorflow as tf

    module = tf.Module()
    module.kernel = tf.Variable(
        np.random.default_rng(0).normal(size=(SIZE * SIZE * 3, CLASSES)), dtype=tf.float32
    )

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8, name="images")])
    def serve(images: Any) -> dict[str, Any]:
        with tf.control_dependencies([side_effect(images)]):
            flat = tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, SIZE * SIZE * 3])
        return {"probabilities": tf.nn.softmax(flat @ module.kernel)}

    module.serve = serve
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve.get_concrete_function()})
    return folder


def saved_model_benign(folder: Path) -> Path:
    """The same model without a side effect: what the hostile ones are measured against."""
    import tensorflow as tf

    return _saved_model(folder, lambda images: tf.no_op())


def saved_model_writing(folder: Path, marker: Path) -> Path:
    """Writes `marker` every time it is called (tf.io.write_file)."""
    import tensorflow as tf

    return _saved_model(folder, lambda images: tf.io.write_file(str(marker), "pwned"))


def saved_model_calling_python(folder: Path, marker: Path) -> Path:
    """Calls back into Python (tf.py_function) in the process that traced it: the callback writes `marker`."""
    import tensorflow as tf

    def payload(images: Any) -> Any:
        marker.touch()
        return images

    return _saved_model(folder, lambda images: tf.py_function(payload, [images], tf.uint8))


def saved_model_reading(folder: Path, secret: Path) -> Path:
    """Reads `secret` (tf.io.read_file) when called; a real exfiltration would fold it into the output."""
    import tensorflow as tf

    return _saved_model(folder, lambda images: tf.strings.length(tf.io.read_file(str(secret))))


def _onnx_model(nodes: list, initializers: list, opsets: list) -> Any:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=opsets)


def _onnx_head(extra: str = "") -> list:
    """Nodes from images to probabilities through MatMul with the initializer 'kernel' (and `extra` before it)."""
    from onnx import TensorProto, helper

    flat = extra or "flat"
    return [
        helper.make_node("Cast", ["images"], ["float"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["float"], ["flat"]),
        helper.make_node("MatMul", [flat, "kernel"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]


def onnx_custom_domain(path: Path) -> Path:
    """Runs its features through `Exec` of the domain 'com.example.evil' (a custom op library's)."""
    import onnx
    from onnx import helper, numpy_helper

    kernel = numpy_helper.from_array(np.zeros((SIZE * SIZE * 3, CLASSES), np.float32), "kernel")
    nodes = _onnx_head("executed")
    nodes.insert(2, helper.make_node("Exec", ["flat"], ["executed"], domain="com.example.evil"))
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example.evil", 1)]
    onnx.save(_onnx_model(nodes, [kernel], opsets), str(path))
    return path


def onnx_external_data_outside(path: Path, secret: Path, absolute: bool = False) -> Path:
    """Its weights are 'external data' at a path that climbs out of its folder (or an absolute one) to `secret`."""
    import os

    from onnx import TensorProto, helper

    kernel = TensorProto(name="kernel", data_type=TensorProto.FLOAT, dims=[SIZE * SIZE * 3, CLASSES])
    kernel.data_location = TensorProto.EXTERNAL
    location = str(secret) if absolute else os.path.relpath(secret, path.parent)
    kernel.external_data.add(key="location", value=location)
    model = _onnx_model(_onnx_head(), [kernel], [helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def litert_custom_op(path: Path) -> Path:
    """A .tflite whose graph holds a custom op: TensorFlow's BesselI0e, which LiteRT has no kernel for,
    kept by the converter's allow_custom_ops."""
    import tensorflow as tf

    kernel = tf.constant(np.random.default_rng(0).normal(size=(SIZE * SIZE * 3, CLASSES)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.uint8, name="images")])
    def serve(images: Any) -> Any:
        flat = tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, SIZE * SIZE * 3])
        return tf.nn.softmax(tf.math.special.bessel_i0e(flat) @ kernel)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], serve)
    converter.allow_custom_ops = True
    path.write_bytes(converter.convert())
    return path
