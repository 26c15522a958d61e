"""Every command that loads a model meets a bad model file with one line, and runs no code from it.

The bad files go to the real commands (`python -m classifier.predict`, `stages.evaluate`, `stages.train`,
`stages.export`)
in a fresh workspace; each case asserts: exit code 1, exactly one `error:` line on stderr naming the file
and what is wrong, no traceback, no marker file (written by the code a malicious file asks for), and a
workspace byte-for-byte what it was before (no output written, no `evil` module compiled or imported),
and TensorFlow never imported: the file is refused before TensorFlow's ~7 s start.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, EVIL, MARKER, PROJECT, RUNS_CODE, run_two_at_a_time, tool_env, write_tiny_splits

BAD = {  # file -> words its error line must hold
    "missing.keras": "model file not found",
    "random.keras": "not a .keras model (unknown binary content); expected a .keras model file",
    "notes.keras": "a text file, not a .keras model; expected a .keras model file",
    "truncated.keras": "damaged .keras file: the zip archive is truncated or corrupt",
    "lambda.keras": "refused: the model asks to run Python code stored in the file (a lambda function in Lambda layer 'double')",
    "evil_function.keras": "refused: the model asks to run code from outside Keras (evil.payload, in Dense layer 'hidden_1')",
}  # fmt: skip


def commands(model: str) -> dict[str, list[str]]:
    return {
        "predict": ["classifier.predict", "photo.png", "--model", model, "--classes", "classes.json"],
        "evaluate": ["stages.evaluate", model, "data", "out"],
        "train": ["stages.train", model, "data", "model.keras", "metrics"],
        "export": ["stages.export", model, "data", "export", "export_metrics"],
    }


CASES = [(command, name) for command in ("predict", "evaluate", "train", "export") for name in BAD]


def with_evil_activation(source: Path, target: Path) -> None:
    """A copy of the .keras zip whose first Dense layer's activation is evil.payload."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for name in old.namelist():
            data = old.read(name)
            if name == "config.json":
                config = json.loads(data)
                dense = next(
                    item for item in config["config"]["layers"] if item["config"]["name"] == "hidden_1"
                )
                dense["config"]["activation"] = {
                    "module": "evil", "class_name": "function", "config": "payload", "registered_name": "payload"
                }  # fmt: skip
                data = json.dumps(config).encode()
            new.writestr(name, data)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A workspace: params.yaml, every input the three commands read, evil.py and the bad model files."""
    import keras

    from classifier.data.splits import save_split
    from classifier.model.build import build_model, compile_model
    from classifier.model.runtime import configure_tensorflow
    from classifier.model.saving import save_model

    root = tmp_path_factory.mktemp("bad_models")
    shutil.copy(PROJECT / "params.yaml", root / "params.yaml")
    write_tiny_splits(root / "data", seed=0)
    labels = np.arange(12) % len(CLASSES)
    save_split(root / "data" / "test.npz", np.zeros((12, 32, 32, 3), np.uint8), labels)
    for folder in (root, root / "data"):
        (folder / "classes.json").write_text(json.dumps(CLASSES))
    Image.new("RGB", (40, 30), (200, 30, 10)).save(root / "photo.png")
    (root / "evil.py").write_text(EVIL)

    configure_tensorflow(seed=0)
    scratch = tmp_path_factory.mktemp("scratch")
    model = build_model(32, len(CLASSES), [8], "relu")
    compile_model(model, "adam", 0.001, "categorical_crossentropy")
    save_model(model, scratch / "good.keras")
    (root / "random.keras").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "notes.keras").write_text("the model is on the shared drive\n")
    (root / "truncated.keras").write_bytes((scratch / "good.keras").read_bytes()[:4000])
    with_evil_activation(scratch / "good.keras", root / "evil_function.keras")
    with contextlib.chdir(scratch):
        inputs = keras.Input((4,))
        save_model(
            keras.Model(inputs, keras.layers.Lambda(RUNS_CODE, name="double")(inputs)), root / "lambda.keras"
        )
        Path(MARKER).unlink()  # building the model called the lambda once, here in the test
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))
    }


def test_the_traps_are_armed(template, tmp_path):
    # Importing evil.py from the working directory, as `python -m` would, writes the marker.
    work = shutil.copytree(template, tmp_path / "work")
    subprocess.run([sys.executable, "-c", "import evil"], cwd=work, check=True, timeout=60)
    assert (work / MARKER).exists()
    with zipfile.ZipFile(template / "lambda.keras") as archive:
        assert '"__lambda__"' in archive.read("config.json").decode()


def case_id(command: str, model: str) -> str:
    return f"{command}-{model}"


@pytest.fixture(scope="module")
def ran(template, tmp_path_factory) -> dict[str, tuple[Path, dict, subprocess.CompletedProcess]]:
    """Every case's command, each in its own copy of the template, two at a time: {case id: (workspace,
    its snapshot before, the finished process)}."""
    runs, commands_to_run = {}, []
    for command, model in CASES:
        tmp_path = tmp_path_factory.mktemp(case_id(command, model))
        work = shutil.copytree(template, tmp_path / "work")
        runs[case_id(command, model)] = (work, snapshot(work))
        env = {**tool_env(), "PYTHONPATH": str(PROJECT), "TMPDIR": str(tmp_path)}
        commands_to_run.append({
            "args": [sys.executable, "-X", "importtime", "-m", *commands(model)[command]],
            "cwd": work, "env": env, "capture_output": True, "text": True, "timeout": 300,
        })  # fmt: skip
    results = run_two_at_a_time(commands_to_run)
    return {key: (*value, result) for (key, value), result in zip(runs.items(), results)}


@pytest.mark.parametrize("command, model", CASES, ids=[case_id(c, m) for c, m in CASES])
def test_a_bad_model_file_is_one_error_line(ran, command, model):
    work, before, result = ran[case_id(command, model)]
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 1, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {model}: ") and BAD[model] in errors[0], output
    assert "Traceback" not in result.stdout + result.stderr, output
    imported = {
        line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line
    }
    assert not imported & {"tensorflow", "keras"}, "refused before TensorFlow starts"
    assert not (work / MARKER).exists(), "code from the model file ran"
    assert snapshot(work) == before, "the command wrote or changed files"
