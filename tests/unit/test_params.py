"""params.yaml is checked before any stage does real work: one test per class of mistake."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from classifier.core.errors import StageError
from classifier.core.params import SCHEMA, _ParamsLoader, load_params

from conftest import PROJECT, copy_repo, sh, tool_env

TRAIN_KEYS = ", ".join(SCHEMA["train"])

DEFAULTS = yaml.safe_load((PROJECT / "params.yaml").read_text())


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages read ./params.yaml; so do these tests."""
    monkeypatch.chdir(tmp_path)


def write_params(folder: Path, change: Callable[[dict], Any] | None = None, text: str | None = None) -> Path:
    """folder/params.yaml: the project's defaults edited by `change`, or exactly `text`."""
    path = folder / "params.yaml"
    if text is None:
        params = copy.deepcopy(DEFAULTS)
        if change:
            change(params)
        text = yaml.safe_dump(params, sort_keys=False)
    path.write_text(text)
    return path


def error_for(folder: Path, change: Callable[[dict], Any] | None = None, text: str | None = None) -> str:
    with pytest.raises(StageError) as raised:
        write_params(folder, change, text)
        load_params()
    message = str(raised.value)
    assert "\n" not in message, "one line"
    return message


def leaf_paths(node: dict, where: str = "") -> set[str]:
    paths = set()
    for key, value in node.items():
        paths |= leaf_paths(value, f"{where}{key}.") if isinstance(value, dict) else {f"{where}{key}"}
    return paths


def test_defaults_are_valid_and_every_param_has_a_rule(tmp_path: Path) -> None:
    write_params(tmp_path)
    assert load_params().model_dump() == DEFAULTS
    assert leaf_paths(DEFAULTS) == leaf_paths(SCHEMA)


def test_numbers_are_read_as_dvc_reads_them(tmp_path: Path) -> None:
    """PyYAML alone reads `1e-3` as a string; DVC (YAML 1.2) and we read the float 0.001."""
    defaults = (PROJECT / "params.yaml").read_text()
    write_params(tmp_path, text=defaults.replace("learning_rate: 0.001", "learning_rate: 1e-3"))
    params = load_params()
    assert params.model.learning_rate == 0.001


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda p: p["train"].update(epoch=p["train"].pop("epochs")),
            "unknown key 'train.epoch'; did you mean 'train.epochs'? (accepted keys here: "
            + TRAIN_KEYS
            + ")",
        ),
        (
            lambda p: p["train"].update(learning_rate=0.01),
            "unknown key 'train.learning_rate'; did you mean 'model.learning_rate'?",
        ),
        (lambda p: p.update(epochs=10), "unknown key 'epochs'; did you mean 'train.epochs'?"),
        (lambda p: p.update(sede=1), "unknown key 'sede'; did you mean 'seed'?"),
    ],
    ids=["typo", "wrong-section", "top-level", "top-level-typo"],
)
def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path, change, expected: str) -> None:
    assert error_for(tmp_path, change).startswith(f"params.yaml: {expected}")


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda p: p["train"].update(epochs="ten"),
            "train.epochs = 'ten' is not accepted; expected an integer from 1 to",
        ),
        (
            lambda p: p["train"].update(batch_size=32.0),
            "train.batch_size = 32.0 is not accepted; expected an integer",
        ),
        (lambda p: p["train"].update(epochs=True), "train.epochs = True is not accepted"),
        (
            lambda p: p.update(seed="42"),
            "seed = '42' is not accepted; expected an integer from 0 to 2147483647",
        ),
        (
            lambda p: p["model"].update(hidden_units=512),
            "model.hidden_units = 512 is not accepted; expected a list",
        ),
        (
            lambda p: p["model"].update(learning_rate="fast"),
            "model.learning_rate = 'fast' is not accepted; expected a number",
        ),
        (
            lambda p: p["download"].update(checksum="c32a1d4a"),
            "download.checksum = 'c32a1d4a' is not accepted; expected null or 'md5:",
        ),
    ],
    ids=[
        "str-for-int",
        "float-for-int",
        "bool-for-int",
        "quoted-seed",
        "int-for-list",
        "str-for-float",
        "bare-checksum",
    ],
)
def test_wrong_type_names_key_value_and_accepted(tmp_path: Path, change, expected: str) -> None:
    assert f"params.yaml: {expected}" in error_for(tmp_path, change)


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda p: p["train"].update(epochs=0),
            "train.epochs = 0 is not accepted; expected an integer from 1 to 100000",
        ),
        (
            lambda p: p["train"].update(batch_size=-1),
            "train.batch_size = -1 is not accepted; expected an integer from 1 to",
        ),
        (
            lambda p: p["preprocess"].update(validation=1.5),
            "preprocess.validation = 1.5 is not accepted; expected a number > 0.0 and < 1.0 or 'test'",
        ),
        (lambda p: p["preprocess"].update(validation=0), "preprocess.validation = 0 is not accepted"),
        (
            lambda p: p["model"].update(learning_rate=0.0),
            "model.learning_rate = 0.0 is not accepted; expected a number > 0.0",
        ),
        (lambda p: p["model"].update(hidden_units=[512, 0]), "model.hidden_units = [512, 0] is not accepted"),
        (lambda p: p["train"].update(threads=0), "train.threads = 0 is not accepted"),
        (
            lambda p: p["plot"].update(dpi=5),
            "plot.dpi = 5 is not accepted; expected an integer from 20 to 600",
        ),
    ],
    ids=[
        "epochs-0",
        "batch-size-negative",
        "validation-1.5",
        "validation-0",
        "learning-rate-0",
        "units-0",
        "threads-0",
        "dpi",
    ],
)
def test_out_of_range_value_names_the_range(tmp_path: Path, change, expected: str) -> None:
    assert f"params.yaml: {expected}" in error_for(tmp_path, change)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("activation", "Relu", "expected one of relu, sigmoid, tanh, elu, selu, gelu,"),
        ("optimizer", "adm", "expected one of adam, adamw, sgd, rmsprop,"),
        (
            "loss",
            "categorical_crossentropi",
            "expected one of categorical_crossentropy, sparse_categorical_crossentropy",
        ),
    ],
)
def test_unknown_name_lists_the_known_ones(tmp_path: Path, key: str, value: str, expected: str) -> None:
    message = error_for(tmp_path, lambda p: p["model"].update({key: value}))
    assert message.startswith(f"params.yaml: model.{key} = '{value}' is not accepted; {expected}")
    assert message.endswith(f"; did you mean '{DEFAULTS['model'][key]}'?")


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda p: p["train"].pop("epochs"),
            "missing key 'train.epochs' (expected an integer from 1 to 100000)",
        ),
        (
            lambda p: p.pop("plot"),
            "missing key 'plot' (expected a mapping with keys dpi, width, height, misclassified)",
        ),
    ],
)
def test_missing_key_says_what_belongs_there(tmp_path: Path, change, expected: str) -> None:
    assert error_for(tmp_path, change) == f"params.yaml: {expected}"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- 1\n- 2\n", "params.yaml: the file must be a mapping with keys seed, download,"),
        ("", "params.yaml: the file is empty; expected a mapping with keys seed, download,"),
        (None, "params.yaml: 'train' must be a mapping with keys " + TRAIN_KEYS + "; got 50"),
    ],
    ids=["list", "empty", "section-is-a-number"],
)
def test_not_a_mapping(tmp_path: Path, text: str | None, expected: str) -> None:
    assert error_for(tmp_path, lambda p: p.update(train=50), text=text).startswith(expected)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    broken = (PROJECT / "params.yaml").read_text().replace("  epochs: 50", "  epochs: [50")
    message = error_for(tmp_path, text=broken)
    assert message.startswith("params.yaml: not valid YAML: while parsing a flow sequence")
    assert 'in "params.yaml", line ' in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        StageError, match=r"^params.yaml: file not found \(run the stage from the project root\)$"
    ):
        load_params()


def stage_commands() -> dict[str, list[str]]:
    """Every stage's command from dvc.yaml, with `python` pointing at this interpreter."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    commands = {}
    for name, stage in stages.items():
        args = shlex.split(stage["cmd"])
        commands[name] = [sys.executable if args[0] == "python" else args[0], "-X", "importtime", *args[1:]]
    return commands


@pytest.mark.parametrize("stage", list(stage_commands()))
def test_every_stage_checks_params_before_tensorflow_or_data(tmp_path: Path, stage: str) -> None:
    """Run in an empty folder with a typo in params.yaml: the stage must fail on the typo (not on its
    missing input files) and without importing TensorFlow (`-X importtime` lists every import)."""
    write_params(tmp_path, lambda p: p["train"].update(epoch=p["train"].pop("epochs")))
    result = subprocess.run(
        stage_commands()[stage],
        cwd=tmp_path,
        env={**tool_env(), "PYTHONPATH": str(PROJECT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    imported = {
        line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line
    }
    assert result.returncode == 1, result.stderr[-2000:]
    assert lines == [
        "error: params.yaml: unknown key 'train.epoch'; did you mean 'train.epochs'? "
        "(accepted keys here: " + TRAIN_KEYS + ")"
    ]
    assert not imported & {"tensorflow", "keras", "dvclive"}
    assert list(tmp_path.iterdir()) == [tmp_path / "params.yaml"], "nothing written"


@pytest.mark.e2e
def test_dvc_repro_stops_at_the_first_stage_on_a_typo(tmp_path: Path, fresh_project: Path) -> None:
    repo = copy_repo(fresh_project, tmp_path / "project")
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("  epochs:", "  epoch:"))
    result = sh(repo, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert "error: params.yaml: unknown key 'train.epoch'; did you mean 'train.epochs'?" in result.stderr
    assert "Running stage 'preprocess'" not in result.stdout
    assert not (repo / "data/raw/dataset.archive").exists()


def run_python(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=PROJECT, env=tool_env(), capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def test_published_json_schema_is_the_models_schema() -> None:
    """params.schema.json is generated from the models (regenerate it as below, never edit it)."""
    result = run_python("-m", "classifier.core.params_schema")
    assert result.returncode == 0, result.stderr
    assert (PROJECT / "params.schema.json").read_text() == result.stdout, (
        "params.schema.json is stale: python -m classifier.core.params_schema > params.schema.json"
    )
    first_line = (PROJECT / "params.yaml").read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=params.schema.json", "editors find the schema"


def test_json_schema_describes_every_key() -> None:
    schema = json.loads((PROJECT / "params.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "params.yaml" and schema["description"]

    def described(node: dict, where: str = "") -> dict[str, str]:
        found = {}
        for key, prop in node["properties"].items():
            target = schema["$defs"][prop["$ref"].rpartition("/")[2]] if "$ref" in prop else prop
            found[f"{where}{key}"] = prop.get("description") or target.get("description")
            if "$ref" in prop:
                assert target["additionalProperties"] is False
                assert target["required"] == list(target["properties"]), "every key is required"
                found |= described(target, f"{where}{key}.")
        return found

    descriptions = described(schema)
    assert set(descriptions) >= leaf_paths(SCHEMA) and all(descriptions.values())


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["train"].update(epoch=p["train"].pop("epochs")),
        lambda p: p.update(learning_rate=0.01),
        lambda p: p["model"].update(optimizer="Adam"),
        lambda p: p["train"].update(epochs="ten"),
        lambda p: p["train"].update(epochs=0),
        lambda p: p["download"].update(checksum="c32a1d4a"),
        lambda p: p["preprocess"].update(validation=1.5),
        lambda p: p.pop("plot"),
    ],
    ids=["typo", "top-level", "choice", "str-for-int", "out-of-range", "checksum", "validation", "missing"],
)
def test_json_schema_agrees_with_the_models(tmp_path: Path, change) -> None:
    """A real JSON Schema validator (if installed) accepts params.yaml, refuses what load_params refuses."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (not a dependency)")
    validator = jsonschema.Draft202012Validator(json.loads((PROJECT / "params.schema.json").read_text()))
    validator.check_schema(validator.schema)
    defaults = yaml.load((PROJECT / "params.yaml").read_text(), Loader=_ParamsLoader)
    assert list(validator.iter_errors(defaults)) == []
    error_for(tmp_path, change)
    params = copy.deepcopy(defaults)
    change(params)
    assert list(validator.iter_errors(params)), "the JSON Schema accepts what load_params refuses"


def test_importing_params_does_not_import_tensorflow() -> None:
    """Stages check params.yaml before TensorFlow loads: the schema must not pull it in."""
    code = "import json, sys, classifier.core.params; print(json.dumps(sorted(sys.modules)))"
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    imported = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert "pydantic" in imported and not imported & {"tensorflow", "keras", "dvclive"}


@pytest.mark.parametrize(
    "key, value, expected",
    [
        (
            "early_stopping_from",
            1.0,
            "train.early_stopping_from = 1.0 is not accepted; expected a number >= 0.0 and < 1.0",
        ),
        (
            "early_stopping_from",
            -0.1,
            "train.early_stopping_from = -0.1 is not accepted; expected a number >= 0.0 and < 1.0",
        ),
        (
            "early_stopping_min_delta",
            2,
            "train.early_stopping_min_delta = 2 is not accepted; expected a number >= 0.0 and <= 1.0",
        ),
        (
            "early_stopping_smoothing",
            1,
            "train.early_stopping_smoothing = 1 is not accepted; expected a number >= 0.0 and < 1.0",
        ),
        ("keep_best", "yes", "train.keep_best = 'yes' is not accepted; expected true or false"),
    ],
)
def test_early_stopping_options_name_their_range(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    assert error_for(tmp_path, lambda p: p["train"].update({key: value})) == f"params.yaml: {expected}"
    combined = {"early_stopping": 10, "early_stopping_from": 0.8, "early_stopping_min_delta": 0.002,
                "early_stopping_smoothing": 0.5, "keep_best": True}  # fmt: skip
    write_params(tmp_path, lambda p: p["train"].update(combined))
    assert load_params().train.early_stopping_from == 0.8, "every option at once, with a patience"
