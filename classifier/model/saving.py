"""Saving and loading .keras model files; saved files are byte-stable."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from classifier.compat import safe_mode_scope
from classifier.core.errors import StageError, is_disk_full
from classifier.core.files import FIXED_ZIP_DATE, atomic_path
from classifier.model.checks import check_model_file, keras_failure


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Save a .keras model whose bytes depend only on its config and weights.

    Keras stamps each save with the date, the object ids of shared dtype policies and the zip
    member times; we rewrite those so DVC sees the same hash for the same model.
    """
    path = Path(path)
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = Path(scratch) / "raw.keras"
        model.save(raw)
        with zipfile.ZipFile(raw) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for name in sorted(source.namelist()):
                content = source.read(name)
                if name == "metadata.json":
                    metadata = json.loads(content)
                    metadata.pop("date_saved", None)
                    content = json.dumps(metadata, sort_keys=True).encode()
                elif name == "config.json":
                    content = json.dumps(_renumber_object_ids(json.loads(content))).encode()
                out.writestr(zipfile.ZipInfo(name, date_time=FIXED_ZIP_DATE), content)


def _renumber_object_ids(config: Any) -> Any:
    """Replace memory-address ids with 1, 2, ... in order of first appearance (sharing kept)."""
    ids: dict[int, int] = {}

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else visit(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [visit(v) for v in node]
        return node

    return visit(config)


def load_model(path: str | os.PathLike) -> Any:
    """The model in a .keras file, or a StageError `<path>: <what is wrong>` (classifier/model/checks.py).

    Keras' safe mode stays on: a config that asks for code (a Lambda layer's stored lambda, a function
    or class from outside Keras, an unknown custom object) is refused, and no code from the file runs.
    """
    check_model_file(path)
    return _keras_load(path)


def _keras_load(path: str | os.PathLike) -> Any:
    import keras

    try:
        # The scope too: `keras.config.enable_unsafe_deserialization()` would override safe_mode=True.
        with safe_mode_scope():
            return keras.saving.load_model(path, safe_mode=True)
    except MemoryError:
        raise
    except Exception as error:
        if is_disk_full(error):
            raise
        raise StageError(keras_failure(path, error)) from None
