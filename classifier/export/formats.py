"""The trained Keras model in app formats under models/export/, byte-reproducible and written atomically:

- saved_model/: a TF SavedModel whose `serving_default` signature takes uint8 images [N, H, W, 3]
  (`images`) and returns `probabilities` [N, classes]; the class names are its asset assets/labels.txt;
- model_float32.tflite, model_int8.tflite: LiteRT models (classifier/export/litert.py);
- model.onnx: ONNX, by Keras 3's `model.export(format="onnx")` (tf2onnx); class names in metadata_props;
- labels.txt: the class names, one per line, beside the single-file models.

What varied run to run, and what we do about it (docs/export.md):
- Keras' ExportArchive (`model.export(format="tf_saved_model")`) stores every weight twice, once in an
  order that changes run to run; we save a tf.Module that tracks each variable once, in the model's order;
- tf.saved_model.save names traced functions `__inference_serve_189` (and captured variables' arguments
  "1318"), numbered by how many the process made before: we renumber them 1, 2, ... in the same order and
  sort the function library by name;
- tf2onnx numbers the names it makes (`Reshape_shape__19`, `unk__20`) with a counter that only grows in
  a process: we renumber them 1, 2, ... in the same order;
- fingerprint.pb holds a random UUID: we rewrite the fingerprint with one derived from its content hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from classifier.compat import saved_model_fingerprint
from classifier.core.files import atomic_folder, atomic_path, write_text
from classifier.export import litert

SAVED_MODEL = "saved_model"
FLOAT32_TFLITE = "model_float32.tflite"
INT8_TFLITE = "model_int8.tflite"
ONNX = "model.onnx"
LABELS = "labels.txt"
# Traced-function names, e.g. __inference_serve_189 or __inference__traced_save_281.
FUNCTION_NAME = re.compile(rb"(__(?:inference|forward|backward)_\w+?)_(\d+)\b")


def export_all(
    model: Any, classes: list[str], calibration: np.ndarray, folder: str | os.PathLike
) -> dict[str, Path]:
    """Write every format under `folder`; return {format name: path}. `calibration`: the int8 model's
    calibration images (uint8 [N, H, W, 3], see litert.calibration_sample)."""
    folder = Path(folder)
    paths = {
        "saved_model": folder / SAVED_MODEL,
        "litert_float32": folder / FLOAT32_TFLITE,
        "litert_int8": folder / INT8_TFLITE,
        "onnx": folder / ONNX,
    }
    with atomic_folder(paths["saved_model"]) as tmp:
        write_saved_model(model, tmp, classes)
    with atomic_path(paths["litert_float32"]) as tmp:
        tmp.write_bytes(litert.finish(litert.convert(paths["saved_model"]), classes))
    with tempfile.TemporaryDirectory(dir=folder) as scratch, atomic_path(paths["litert_int8"]) as tmp:
        write_saved_model(model, Path(scratch) / "float_input", classes, dtype="float32")
        int8 = litert.convert(Path(scratch) / "float_input", litert.calibration_batches(calibration))
        tmp.write_bytes(litert.finish(int8, classes, raw_pixel_input=True))
    with atomic_path(paths["onnx"]) as tmp:
        write_onnx(model, tmp, classes)
    write_text(folder / LABELS, labels_text(classes))
    return paths


def labels_text(classes: list[str]) -> str:
    return "".join(f"{name}\n" for name in classes)


def write_saved_model(
    model: Any, folder: str | os.PathLike, classes: list[str], dtype: str = "uint8"
) -> None:
    """Save `model` as a SavedModel in the (new or empty) `folder`, byte-stable.

    `dtype` is the input's: uint8 for apps; float32 (pixel values 0..255) only for the int8 conversion.
    """
    import keras
    import tensorflow as tf

    folder = Path(folder)
    size = model.input_shape[1]
    if dtype != "uint8":  # the same layers (and weights) behind an input of another type
        image = keras.Input(shape=model.input_shape[1:], dtype=dtype, name="image")
        model = keras.models.clone_model(model, input_tensors=image, clone_function=lambda layer: layer)
    module = tf.Module()
    module.weights = [variable.value for variable in model.weights]  # each tf.Variable once, in order
    spec = tf.TensorSpec([None, size, size, 3], dtype, name="images")

    @tf.function(input_signature=[spec], autograph=False)
    def serve(images: Any) -> dict[str, Any]:
        return {"probabilities": model(images, training=False)}

    module.serve = serve
    with tempfile.TemporaryDirectory() as scratch:
        labels = Path(scratch) / LABELS
        labels.write_text(labels_text(classes), encoding="utf-8")
        module.labels = tf.saved_model.Asset(str(labels))  # copied to assets/labels.txt
        tf.saved_model.save(
            module, str(folder), signatures={"serving_default": serve.get_concrete_function()}
        )
    _normalize(folder)


def _normalize(folder: Path) -> None:
    """Renumber traced functions in order of their numbers, sort the function library, rewrite the
    fingerprint with a UUID derived from its hashes (see the module docstring)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import fingerprint_pb2, saved_model_pb2

    path = folder / "saved_model.pb"
    proto = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    text = text_format.MessageToString(proto, as_utf8=False).encode()
    names = sorted(
        {m.group(0) for m in FUNCTION_NAME.finditer(text)}, key=lambda n: int(n.rsplit(b"_", 1)[1])
    )
    new = {name: FUNCTION_NAME.match(name).group(1) + b"_%d" % i for i, name in enumerate(names, start=1)}
    text = FUNCTION_NAME.sub(lambda m: new[m.group(0)], text)
    proto = text_format.Parse(text.decode(), saved_model_pb2.SavedModel())
    for graph in proto.meta_graphs:
        functions = sorted(graph.graph_def.library.function, key=lambda f: f.signature.name)
        del graph.graph_def.library.function[:]
        graph.graph_def.library.function.extend(functions)
        # Captured variables' arguments are named by a process-wide counter too ("1318"): renumber them.
        arguments = [a.attr for f in graph.graph_def.library.function for a in f.arg_attr.values()]
        named = [attr["_user_specified_name"] for attr in arguments if "_user_specified_name" in attr]
        numbered = [value for value in named if value.s.isdigit()]
        rank = {n: i for i, n in enumerate(sorted({int(v.s) for v in numbered}), start=1)}
        for value in numbered:
            value.s = b"%d" % rank[int(value.s)]
    path.write_bytes(proto.SerializeToString(deterministic=True))

    fingerprint = fingerprint_pb2.FingerprintDef.FromString(saved_model_fingerprint(folder))
    fingerprint.uuid = ""
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))  # TF writes a random 128-bit number here
    (folder / "fingerprint.pb").write_bytes(fingerprint.SerializeToString(deterministic=True))


def write_onnx(model: Any, path: str | os.PathLike, classes: list[str]) -> None:
    """ONNX through Keras 3 (tf2onnx), the class names in metadata_props['labels'] (one per line)."""
    import warnings

    import onnx

    model(np.zeros((1, *model.input_shape[1:]), np.uint8), training=False)  # Keras exports called models only
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / ONNX
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore", FutureWarning)  # Keras' tf2onnx patch asks numpy for np.object
            model.export(str(raw), format="onnx", verbose=False)
        proto = onnx.load(str(raw))
    # "converted from b'__inference___call___2418'": the traced function's number varies too.
    proto.graph.doc_string = re.sub(r"(__inference_\w+?)_\d+\b", r"\1", proto.graph.doc_string)
    _renumber_onnx_names(proto.graph)
    proto.metadata_props.add(key="labels", value=labels_text(classes))
    Path(path).write_bytes(proto.SerializeToString(deterministic=True))


def _renumber_onnx_names(graph: Any) -> None:
    """tf2onnx's generated names end in `__<counter>` (its own suffix rule): renumber them 1, 2, ..."""
    suffix = re.compile(r"__(\d+)(:\d+)?$")
    values = [*graph.input, *graph.output, *graph.value_info]
    dims = [d for v in values for d in v.type.tensor_type.shape.dim if d.HasField("dim_param")]
    names = [(n, "name") for n in [*graph.node, *graph.initializer, *values]] + [
        (d, "dim_param") for d in dims
    ]
    lists = [n.input for n in graph.node] + [n.output for n in graph.node]
    every = [getattr(o, f) for o, f in names] + [name for names_ in lists for name in names_]
    found = sorted({int(m.group(1)) for name in every if (m := suffix.search(name))})
    rank = {n: i for i, n in enumerate(found, start=1)}

    def fix(name: str) -> str:
        return suffix.sub(lambda m: f"__{rank[int(m.group(1))]}{m.group(2) or ''}", name)

    for owner, field in names:
        setattr(owner, field, fix(getattr(owner, field)))
    for names_ in lists:
        names_[:] = [fix(name) for name in names_]


def folder_size(path: str | os.PathLike) -> int:
    """Bytes of a model file, or of every file in a model folder."""
    path = Path(path)
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size
