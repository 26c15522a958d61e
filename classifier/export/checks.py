"""What an exported model file must be before any runtime reads it: a graph that only infers.

A SavedModel, an ONNX or a LiteRT file is a program, and one shared through a registry may ask for more
than inference (write or read files, open sockets, call back into Python). load_predictor
(classifier/export/exported.py) calls check_exported() first, so TensorFlow, onnxruntime and LiteRT only
ever see files that passed; each refusal is one StageError `<path>: refused: ...` naming what was found.

- SavedModel: saved_model.pb is parsed, not loaded. Every function tf.saved_model.load or a signature can
  run (those the object graph names, and every function they call) may hold only the ops in
  SAVED_MODEL_OPS. The saver's own functions (SaveV2, RestoreV2, ...) are not checked: nothing names them
  but the graph's top level, which TensorFlow 2's loader never runs (it restores variables itself).
  A SavedModel without an object graph (TensorFlow 1) would be run as a session, init ops included:
  refused.
- ONNX: every node (subgraphs included) is in the standard domains, and external data stays inside the
  model's folder.
- LiteRT: every operator is a built-in; a custom op would need a kernel from outside the file.
- .keras files are checked by classifier/model/checks.py, as before.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from classifier.core.errors import StageError

# The ops in the serving functions of every SavedModel the export stage writes, for every model the params
# can build: each activation, no/batch/layer normalisation, dropout, residual connections, the whitening
# layer and test-time augmentation (model.flip_average and model.shift_average: transposes, fixed
# matmuls, a mean); listed from real exports: tests/unit/test_export_checks.py exports such models and
# fails if one needs more.
# Nothing here reads or writes state outside the graph, or calls out of it.
SAVED_MODEL_OPS = frozenset(
    # calls to functions of the same file (checked in turn), constants, plumbing
    {"PartitionedCall", "StatefulPartitionedCall", "Const", "Identity", "IdentityN", "NoOp", "StopGradient"}
    # reading the model's own weights, captured as arguments
    | {"ReadVariableOp"}
    # shapes and types (a Dense layer on images, the flip average's mirror, computes its shapes with
    # GatherV2, Prod and ConcatV2: on shapes only, nothing outside the graph)
    | {"Cast", "Pack", "Reshape", "Shape", "StridedSlice", "Transpose", "ConcatV2", "GatherV2", "Prod"}
    # arithmetic, dense layers, normalisation
    | {"AddV2", "Sub", "Mul", "RealDiv", "Neg", "Square", "SquaredDifference", "Rsqrt", "Exp", "Erfc"}
    | {"MatMul", "BiasAdd", "Mean", "Sum"}
    # activations and the output
    | {"Relu", "Relu6", "LeakyRelu", "Elu", "Selu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Softmax"}
)
ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
INFERENCE_ONLY = "only graphs that do inference alone are run"


def check_exported(path: str | os.PathLike) -> None:
    """Raise StageError `<path>: refused: ...` unless the SavedModel folder, .onnx or .tflite file at
    `path` asks for inference alone. Other paths are left to the caller."""
    path = Path(path)
    if path.is_dir():
        check_saved_model(path)
    elif path.suffix.lower() == ".onnx":
        check_onnx(path)
    elif path.suffix.lower() == ".tflite":
        check_litert(path)


def check_saved_model(folder: str | os.PathLike) -> None:
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(folder) / "saved_model.pb"  # what tf.saved_model.load reads when it exists
    try:
        proto = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except (OSError, DecodeError) as error:
        raise StageError(
            f"{path}: not a readable SavedModel ({' '.join(str(error).split())[:200]})"
        ) from None
    if len(proto.meta_graphs) != 1 or not proto.meta_graphs[0].HasField("object_graph_def"):
        raise StageError(
            f"{path}: refused: a TensorFlow 1 SavedModel (no object graph), whose init ops would run at "
            f"load; only TensorFlow 2 SavedModels are loaded"
        )
    meta_graph = proto.meta_graphs[0]
    library = {function.signature.name: function for function in meta_graph.graph_def.library.function}
    objects = meta_graph.object_graph_def
    to_check = list(objects.concrete_functions) + list(_functions_named_by_objects(objects))
    checked: set[str] = set()
    while to_check:
        name = to_check.pop()
        if name in checked:
            continue
        if name not in library:
            raise StageError(f"{path}: refused: it calls function {name!r}, which is not in the file")
        checked.add(name)
        if "api_implements" in library[name].attr:  # Grappler may swap in another function that declares it
            raise StageError(
                f"{path}: refused: function {name} declares api_implements, so TensorFlow could run another "
                f"function in its place; {INFERENCE_ONLY}"
            )
        for node in library[name].node_def:
            called = list(_called_functions(node))
            if node.op in library:  # a function called by its name, as an op
                called.append(node.op)
            elif node.op not in SAVED_MODEL_OPS:
                raise StageError(
                    f"{path}: refused: op {node.op} (node {node.name!r} in function {name}) is not one "
                    f"inference needs; {INFERENCE_ONLY}"
                )
            to_check += called


def _functions_named_by_objects(objects: Any) -> Iterator[str]:
    for node in objects.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            yield from node.function.concrete_functions
        elif kind == "bare_concrete_function":
            yield node.bare_concrete_function.concrete_function_name


def _called_functions(node: Any) -> Iterator[str]:
    """The functions a node's attributes name (a call's `f`, a branch, a body ...)."""
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        if value.HasField("list"):
            yield from (function.name for function in value.list.func)


def check_onnx(path: str | os.PathLike) -> None:
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as error:
        raise StageError(
            f"{path}: not a loadable ONNX model ({' '.join(str(error).split())[:200]})"
        ) from None
    for node in _onnx_nodes(model.graph):
        if node.domain not in ONNX_DOMAINS:
            raise StageError(
                f"{path}: refused: op {node.op_type} of the custom domain {node.domain!r} needs code from "
                f"outside the file; only standard ONNX ops are run"
            )
    folder = path.resolve().parent
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        target = (folder / location).resolve()
        if Path(location).is_absolute() or ".." in Path(location).parts or not target.is_relative_to(folder):
            raise StageError(
                f"{path}: refused: the weights {tensor.name!r} are read from {location!r}, outside the "
                f"model's folder"
            )


def _onnx_nodes(graph: Any) -> Iterator[Any]:
    """Every node, those of subgraphs (If, Loop, Scan bodies) included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                yield from _onnx_nodes(subgraph)


def _onnx_tensors(graph: Any) -> Iterator[Any]:
    """Every stored tensor: initializers and constants, those of subgraphs included."""
    yield from graph.initializer
    yield from (sparse.values for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            yield from [attribute.t, *attribute.tensors]
            for subgraph in [attribute.g, *attribute.graphs]:
                yield from _onnx_tensors(subgraph)


def check_litert(path: str | os.PathLike) -> None:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - the lock installs ai-edge-litert
        from tensorflow.lite.python import schema_py_generated as schema

    path = Path(path)
    try:
        data = bytearray(path.read_bytes())
        if data[4:8] != b"TFL3":  # the flatbuffer's file identifier; else the reader would read garbage
            raise ValueError("no TFL3 identifier")
        model = schema.Model.GetRootAsModel(data, 0)
        codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
        # Newer files keep the code in builtin_code, older ones in deprecated_builtin_code (at most 127).
        found = [(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), code.CustomCode()) for code in codes]
    except (OSError, ValueError, IndexError, TypeError, struct.error) as error:
        raise StageError(f"{path}: not a LiteRT model ({' '.join(str(error).split())[:200]})") from None
    for builtin, custom in found:
        if builtin == schema.BuiltinOperator.CUSTOM:
            name = (custom or b"").decode(errors="replace")
            raise StageError(
                f"{path}: refused: custom op {name!r} needs a kernel from outside the file; only LiteRT's "
                f"built-in ops are run"
            )
