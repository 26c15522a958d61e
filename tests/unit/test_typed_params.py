"""Params travel typed: load_params() returns the validated Params, every public function of classifier/
takes its section models (or plain values), never params as a dict, and what is hashed or saved from
the typed params has the same bytes as from the file's mapping (a resume key never changes)."""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import MISSING
from pathlib import Path

import pytest
import yaml

from classifier.core.dotted_keys import flatten, set_dotted
from classifier.core.params import SCHEMA, load_params, validate_params
from classifier.core.params_schema import Params, Section
from classifier.data.dataset import Options
from classifier.data.fetch import Network
from classifier.training.backup import run_key

from conftest import PROJECT

DEFAULTS = yaml.safe_load((PROJECT / "params.yaml").read_text())
RECIPE = yaml.safe_load((PROJECT / "recipes" / "better-mlp.yaml").read_text())
# Names a parameter holding params goes by; sections are named after themselves (`train: TrainParams`).
PARAMS_NAMES = {"params", "settings", "section", "options"}
MAPPINGS = {"dict", "Dict", "Mapping", "MutableMapping"}
# Where params arrive untyped on purpose.
ALLOWED = {
    "classifier/core/params.py:validate_params(params: Any)",  # the YAML mapping it turns into Params
    "classifier/seeds_report.py:why_skipped(params: Any)",  # other experiments' params, from dvc exp show
    # Raw YAML / `dvc exp show` mappings meet `-S key=value` names here, before or without validation.
    "classifier/core/dotted_keys.py:flatten(params: dict[str, Any])",
    "classifier/core/dotted_keys.py:set_dotted(params: dict[str, Any])",
}


def leaf_keys(schema: dict, where: str = "") -> Iterator[str]:
    for key, rule in schema.items():
        yield key
        if isinstance(rule, dict):
            yield from leaf_keys(rule)


PARAM_KEYS = set(leaf_keys(SCHEMA))


def public_functions(root: Path) -> Iterator[tuple[str, ast.FunctionDef]]:
    """Module-level functions and methods of module-level classes whose names do not start with '_'."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(root.parent).as_posix()
        for node in tree.body:
            bodies = (
                [(node.name, child) for child in node.body]
                if isinstance(node, ast.ClassDef)
                else [("", node)]
            )
            for owner, function in bodies:
                if isinstance(
                    function, ast.FunctionDef | ast.AsyncFunctionDef
                ) and not function.name.startswith("_"):
                    yield f"{where}:{owner + '.' if owner else ''}{function.name}", function


def untyped(annotation: ast.expr | None) -> bool:
    """No annotation, Any, a bare mapping or one of Any values (`dict[str, Any]`): not a section model, a
    plain type or a mapping of a named type (`dict[str, np.ndarray]`)."""
    if annotation is None:
        return True
    nodes = list(ast.walk(annotation))
    names = {node.id for node in nodes if isinstance(node, ast.Name)}
    subscripted = {
        node.value.id
        for node in nodes
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
    }
    return "Any" in names or bool((names - subscripted) & MAPPINGS)


def params_dicts(root: Path) -> list[str]:
    """Each parameter of a public function that holds params as a mapping: named like params, or read
    with a params key (`x["batch_size"]`), and not annotated with a section model or a plain type."""
    found = []
    for name, function in public_functions(root):
        arguments = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
        for argument in arguments:
            if argument.arg in ("self", "cls") or not untyped(argument.annotation):
                continue
            read_with_keys = {
                node.slice.value
                for node in ast.walk(function)
                if isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == argument.arg
                and isinstance(node.slice, ast.Constant)
                and node.slice.value in PARAM_KEYS
            }
            if argument.arg in PARAMS_NAMES or argument.arg.endswith("_params") or read_with_keys:
                annotation = ast.unparse(argument.annotation) if argument.annotation else "no annotation"
                found.append(f"{name}({argument.arg}: {annotation})")
    return [name for name in found if name not in ALLOWED]


def test_no_public_function_takes_params_as_a_dict() -> None:
    found = params_dicts(PROJECT / "classifier")
    assert not found, f"take the section models (train: TrainParams, ...) or plain values instead: {found}"


def test_the_dict_finder_finds_params_dicts(tmp_path: Path) -> None:
    # The test above can fail: a dict named like params, or a mapping read with a params key, is found.
    package = tmp_path / "classifier"
    package.mkdir()
    (package / "old.py").write_text(
        "from typing import Any\n"
        "def fit(model: Any, settings: dict[str, Any]) -> None: ...\n"
        "def schedule(node: dict, seed: int) -> int:\n    return node['batch_size'] + seed\n"
        "def _private(params: dict) -> None: ...\n"
        "def typed(train: 'TrainParams', state: dict[str, Any]) -> None:\n    state['epoch']\n"
    )
    assert params_dicts(package) == [
        "classifier/old.py:fit(settings: dict[str, Any])",
        "classifier/old.py:schedule(node: dict)",
    ]


def test_load_params_returns_the_typed_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    params = load_params()
    sections = [value for key, value in params if key != "seed"]
    assert isinstance(params, Params) and all(isinstance(section, Section) for section in sections)
    assert params.train.batch_size == DEFAULTS["train"]["batch_size"]
    assert params.preprocess.limits.max_members == DEFAULTS["preprocess"]["limits"]["max_members"]


def schema_fields(model: type[Section], where: str = "") -> Iterator[tuple[str, object]]:
    for name, field in model.model_fields.items():
        yield f"{where}{name}", field
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            yield from schema_fields(field.annotation, f"{where}{name}.")


def test_every_default_is_written_once_in_params_yaml() -> None:
    """The schema requires every key (a default there would be a second copy of params.yaml's), and the
    options the stages build from params take every value from them."""
    assert [path for path, field in schema_fields(Params) if not field.is_required()] == []
    with_defaults = [
        f.name for kind in (Options, Network) for f in dataclasses.fields(kind) if f.default is not MISSING
    ]
    assert with_defaults == ["decoding"], "only what is not a param has a default"


def as_written(params: dict) -> dict:
    """The mapping with every float param that is a whole number written as an int (`0`, not `0.0`)."""
    ints = copy.deepcopy(params)
    ints["train"].update(early_stopping_from=0, early_stopping_min_delta=0, early_stopping_smoothing=0)
    ints["model"].update(dropout=0, weight_decay=0, learning_rate=1)
    ints["download"].update(connect_timeout=10, retry_delay=1)
    return ints


def merged_with_recipe() -> dict:
    """params.yaml with the recipe's values set key by key, as recipes/run.py sets them."""
    merged = copy.deepcopy(DEFAULTS)
    for key, value in flatten(RECIPE).items():
        set_dotted(merged, key, value)
    return merged


FILES = {
    "defaults": DEFAULTS,
    "whole numbers as ints": as_written(DEFAULTS),
    "better-mlp": merged_with_recipe(),
}


@pytest.mark.parametrize("raw", FILES.values(), ids=FILES.keys())
def test_the_typed_params_dump_to_the_files_mapping_with_its_types(raw: dict) -> None:
    """model_dump() gives back the mapping YAML gave, `0` an int and `0.0` a float: the saved model's
    config (build_and_compile passes these values on) and anything hashed stay the same bytes."""
    dumped = validate_params(raw).model_dump()
    assert json.dumps(dumped, sort_keys=True) == json.dumps(raw, sort_keys=True)
    assert list(dumped) == list(raw) and list(dumped["train"]) == list(raw["train"])


@pytest.mark.parametrize("raw", FILES.values(), ids=FILES.keys())
def test_the_run_key_is_the_one_hashed_from_the_dict(raw: dict, tmp_path: Path) -> None:
    """A backup made before params were typed is found by a run after: the same key for the same file."""
    data = tmp_path / "train.npz"
    data.write_bytes(b"images")
    # The key as it was computed from the plain dict before params were typed.
    digest = hashlib.sha256(json.dumps([raw["seed"], raw["train"]], sort_keys=True).encode())
    digest.update(hashlib.sha256(b"images").digest())
    params = validate_params(raw)
    assert run_key(params.seed, params.train, [data]) == digest.hexdigest()[:16]
