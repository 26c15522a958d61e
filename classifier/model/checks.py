"""What a model file must be before Keras reads it, and Keras' own refusals as one line.

check_model_file() looks at the file cheaply (no Keras): it exists and is a file, it is a zip (not an
HDF5 .h5 file, a text file or random bytes), the zip is whole (every CRC checks out) and holds
config.json and the weights, config.json is JSON, and the config asks for no code: no Python lambda
(a Lambda layer's function is stored as bytecode) and nothing from a module outside Keras. Keras' safe
mode refuses those too; checking first means no Keras code path is trusted with them. Every problem is
a StageError `<path>: <what is wrong>`.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from classifier.core.errors import StageError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
WEIGHTS = ("model.weights.h5", "model.weights.npz")
ACCEPTED = "expected a .keras model file (the Keras 3 format build_and_compile and train save)"
KERAS_ONLY = "only models made of Keras' own layers and functions are loaded"
BOMB_FLOOR, BOMB_RATIO = 1 << 28, 100  # as Keras: a member over 256 MiB that inflates over 100x
MAX_REASON = 300  # characters of Keras' own reason kept in the one-line message


def check_model_file(path: str | os.PathLike) -> None:
    """Raise StageError `<path>: <what is wrong>` unless `path` looks like a whole, code-free .keras file."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path}: model file not found")
    if path.is_dir():
        raise StageError(f"{path}: is a folder; {ACCEPTED}")
    try:
        with open(path, "rb") as file:
            head = file.read(1024)
        is_zip = zipfile.is_zipfile(path)
    except OSError as error:
        raise StageError(f"{path}: cannot read ({error.strerror or error})") from None
    if not is_zip:
        if head.startswith(ZIP_SIGNATURE):
            raise StageError(f"{path}: damaged .keras file: the zip archive is truncated or corrupt")
        raise StageError(f"{path}: {_what_it_is(head)}; {ACCEPTED}")
    config = _read_config(path)
    if path.suffix != ".keras":
        raise StageError(f"{path}: a Keras model archive must be named *.keras (Keras loads no other name)")
    if not (isinstance(config, dict) and "class_name" in config):
        raise StageError(f"{path}: config.json does not describe a Keras model; {ACCEPTED}")
    for request in code_requests(config):
        raise StageError(f"{path}: refused: the model asks to run {request}; {KERAS_ONLY}")


def _what_it_is(head: bytes) -> str:
    if not head:
        return "an empty file"
    if head.startswith(HDF5_SIGNATURE):
        return "an HDF5 file (the legacy Keras .h5 format), not a .keras model"
    try:
        head.decode("utf-8")
        text = b"\0" not in head
    except UnicodeDecodeError as error:  # a character cut at the end of the 1024 bytes is still text
        text = b"\0" not in head and error.start >= len(head) - 3
    return "a text file, not a .keras model" if text else "not a .keras model (unknown binary content)"


def _read_config(path: Path) -> Any:
    damaged = f"{path}: damaged .keras file"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise StageError(f"{damaged}: no config.json in the archive")
            if not any(name in names for name in WEIGHTS):
                raise StageError(f"{damaged}: no weights ({' or '.join(WEIGHTS)}) in the archive")
            for info in archive.infolist():
                if info.file_size > BOMB_FLOOR and info.file_size > BOMB_RATIO * info.compress_size:
                    raise StageError(
                        f"{damaged}: {info.filename} inflates {info.file_size:,} bytes from "
                        f"{info.compress_size:,} (a decompression bomb)"
                    )
            bad = archive.testzip()  # reads every member: catches CRC errors and cut data
            if bad is not None:
                raise StageError(f"{damaged}: {bad} is corrupt (CRC check failed)")
            content = archive.read("config.json")
            if "model.weights.h5" in names:
                with archive.open("model.weights.h5") as weights:
                    if weights.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                        raise StageError(f"{damaged}: model.weights.h5 is not an HDF5 file")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
        raise StageError(f"{damaged}: {_squeeze(str(error)) or type(error).__name__}") from None
    try:
        return json.loads(content)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise StageError(f"{damaged}: config.json is not valid JSON ({error})") from None


def code_requests(config: Any, owner: str = "the model") -> Iterator[str]:
    """Each thing in a model config that would make Keras run code from the file or outside Keras."""
    if isinstance(config, list):
        for item in config:
            yield from code_requests(item, owner)
    if not isinstance(config, dict):
        return
    inner, module, name = config.get("config"), config.get("module"), config.get("class_name")
    if name == "__lambda__":
        yield f"Python code stored in the file (a lambda function in {owner})"
        return
    if isinstance(module, str) and module.split(".")[0] not in ("keras", "builtins"):
        what = inner if name == "function" and isinstance(inner, str) else name
        yield f"code from outside Keras ({module}.{what}, in {owner})"
        return
    registered = config.get("registered_name")
    if isinstance(registered, str) and ">" in registered:  # "package>Name": a registered custom object
        yield f"the custom object '{registered}' (in {owner}), which is not part of Keras"
        return
    if isinstance(inner, dict) and isinstance(inner.get("name"), str) and isinstance(name, str):
        owner = f"{name} layer '{inner['name']}'" if module == "keras.layers" else f"{name} '{inner['name']}'"
    for value in config.values():
        yield from code_requests(value, owner)


def keras_failure(path: str | os.PathLike, error: BaseException) -> str:
    """`<path>: ...` for an error Keras raised while loading, Keras' reason squeezed to one line."""
    reason = str(error).rsplit("Exception encountered:", 1)[-1]  # Keras wraps a layer's error in a page
    reason = _squeeze(reason.split(" Full object config:")[0])
    unknown = re.match(r"Could not locate (class|function) '([^']*)'", reason)
    if unknown:
        return f"{path}: refused: the model asks for the {unknown[1]} '{unknown[2]}', which is not part of Keras; {KERAS_ONLY}"
    reason = reason or type(error).__name__
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3].rstrip() + "..."
    return f"{path}: Keras cannot load this model: {reason}"


def _squeeze(text: str) -> str:
    return " ".join(text.split())
