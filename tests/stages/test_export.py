"""The export stage's command on tiny inputs: its outputs, its metrics, the same bytes from a second run, the
99.9% floor for float formats as one line, its reload through classifier/export/checks.py, and its deps in
dvc.yaml (exactly the files it imports)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tools.code_deps import project_imports

from conftest import PROJECT, learnable_images, run_two_at_a_time, set_params, tool_env

FORMATS = ["keras", "litert_float32", "litert_int8", "onnx", "saved_model"]
COMMAND = ["models/model.keras", "data/prepared"]


def run_stage(workspace: Path, out: str, metrics: str, prelude: str = "") -> subprocess.CompletedProcess:
    """`python -m stages.export` in `workspace`; with `prelude`, the same main() after that Python code."""
    return subprocess.run(**stage_command(workspace, out, metrics, prelude))


def stage_command(workspace: Path, out: str, metrics: str, prelude: str = "") -> dict:
    """run_stage's subprocess.run arguments."""
    args = [*COMMAND, out, metrics, "--timing", f"{metrics}-timing/export.json"]
    if prelude:
        code = (
            f"{prelude}\nimport sys\nsys.argv = ['export', *{args!r}]\n"
            "from classifier.core.errors import run\nfrom stages.export import main\nrun(main)\n"
        )
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "stages.export", *args]
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}
    return {"args": command, "cwd": workspace, "env": env, "capture_output": True, "text": True, "timeout": 600,
            "check": False}  # fmt: skip


SECOND_RUN: dict[Path, subprocess.CompletedProcess] = {}  # the workspace's second run, by workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml (defaults, fewer timing runs), the prepared splits and a tiny trained model; then the
    stage has run once into models/export and metrics/export, and in a second process at the same time
    into models/again and metrics/again (SECOND_RUN)."""
    import keras

    from classifier.core.files import write_json
    from classifier.data.splits import save_split
    from classifier.model.build import build_model, compile_model
    from classifier.model.runtime import configure_tensorflow
    from classifier.model.saving import save_model

    root = tmp_path_factory.mktemp("export_stage")
    (root / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    set_params(root, {"export.calibration_images": 64})
    labels = np.arange(240) % 3
    images = learnable_images(labels, seed=21)
    save_split(root / "data/prepared/train.npz", images[:180], labels[:180])
    save_split(root / "data/prepared/test.npz", images[180:], labels[180:])
    write_json(root / "data/prepared/classes.json", ["airplane", "automobile", "bird"])
    configure_tensorflow(seed=3)  # no threads: TensorFlow may already run in this test process
    model = build_model(32, 3, [16], "relu")
    compile_model(model, "adam", 0.001, "categorical_crossentropy")
    model.fit(images[:180], keras.utils.to_categorical(labels[:180], 3), epochs=3, batch_size=30, verbose=0)
    save_model(model, root / "models/model.keras")
    result, SECOND_RUN[root] = run_two_at_a_time(
        [
            stage_command(root, "models/export", "metrics/export"),
            stage_command(root, "models/again", "metrics/again"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "stdout.txt").write_text(result.stdout)
    return root


def test_the_stage_writes_every_format_and_labels(workspace: Path) -> None:
    export = workspace / "models/export"
    assert sorted(p.name for p in export.iterdir()) == [
        "labels.txt",
        "model.onnx",
        "model_float32.tflite",
        "model_int8.tflite",
        "saved_model",
    ]
    assert sorted(p.name for p in (export / "saved_model").iterdir()) == [
        "assets",
        "fingerprint.pb",
        "saved_model.pb",
        "variables",
    ]
    assert (export / "labels.txt").read_text() == "airplane\nautomobile\nbird\n"
    assert not [p for p in workspace.rglob(".*.tmp")], "no temporary files or folders left"
    stdout = (workspace / "stdout.txt").read_text()
    assert re.search(r"export: litert_int8 +accuracy 1\.0000, agreement 1\.0000", stdout), stdout


def test_metrics_hold_parity_and_size_per_format_and_the_latency_its_own_file(workspace: Path) -> None:
    metrics = json.loads((workspace / "metrics/export/metrics.json").read_text())
    assert sorted(metrics) == FORMATS
    for name in FORMATS:
        assert sorted(metrics[name]) == [
            "max_abs_probability_diff",
            "size_bytes",
            "test_accuracy",
            "top1_agreement",
        ]
        assert metrics[name]["test_accuracy"] == 1.0, "the classes differ by colour"
    assert metrics["keras"]["top1_agreement"] == 1.0 and metrics["keras"]["max_abs_probability_diff"] == 0.0
    for name in ("saved_model", "litert_float32", "onnx"):
        assert metrics[name]["top1_agreement"] == 1.0 and metrics[name]["max_abs_probability_diff"] < 1e-5
    assert metrics["litert_int8"]["max_abs_probability_diff"] < 0.05
    assert metrics["litert_int8"]["size_bytes"] < metrics["litert_float32"]["size_bytes"] / 3  # int8 weights
    assert (
        metrics["litert_int8"]["size_bytes"] == (workspace / "models/export/model_int8.tflite").stat().st_size
    )
    assert sorted(p.name for p in (workspace / "metrics/export").iterdir()) == ["metrics.json"]
    # Timings vary run to run: a file of their own, so that metrics.json stays byte-identical.
    timing = json.loads((workspace / "metrics/export-timing/export.json").read_text())
    assert sorted(timing["latency_ms"]) == FORMATS and timing["latency_runs"] == 200
    assert all(0 < ms < 1000 for ms in timing["latency_ms"].values())
    stdout = (workspace / "stdout.txt").read_text()
    timed = re.findall(r"^export: (\w+) .* ([\d.]+) ms per image \(median of 200\)$", stdout, re.MULTILINE)
    assert {name: float(ms) for name, ms in timed} == {
        k: round(v, 3) for k, v in timing["latency_ms"].items()
    }


def test_a_second_run_writes_the_same_bytes(workspace: Path) -> None:
    result = SECOND_RUN[workspace]  # another process, run beside the first
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = workspace / "models/export", workspace / "models/again"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert [f for f in files if (first / f).read_bytes() != (second / f).read_bytes()] == []
    assert (workspace / "metrics/export/metrics.json").read_bytes() == (
        workspace / "metrics/again/metrics.json"
    ).read_bytes()


def test_a_float_format_that_disagrees_fails_with_one_line(workspace: Path) -> None:
    # The files of the first run, and a SavedModel whose classes come out reversed (the middle one stays):
    # the real check fails.
    prelude = (
        "from pathlib import Path\n"
        "import classifier.export.formats, classifier.export.exported\n"
        "names = {'saved_model': 'saved_model', 'litert_float32': 'model_float32.tflite',\n"
        "         'litert_int8': 'model_int8.tflite', 'onnx': 'model.onnx'}\n"
        "classifier.export.formats.export_all = lambda *a: {k: Path('models/export') / v for k, v in names.items()}\n"
        "load = classifier.export.exported.load_predictor\n"
        "def reversed_saved_model(path, threads=None):\n"
        "    predictor = load(path, threads)\n"
        "    if predictor.format == 'saved_model':\n"
        "        run = predictor._run\n"
        "        predictor._run = lambda images: run(images)[:, ::-1]\n"
        "    return predictor\n"
        "classifier.export.exported.load_predictor = reversed_saved_model\n"
    )
    result = run_stage(workspace, "models/export", "metrics/failed", prelude)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: export: saved_model agrees with the Keras model on 33.33% of the 60 test images (40 differ); "
        "a float export must reach 99.9% (see metrics/failed/metrics.json)"
    ]
    assert "Traceback" not in result.stderr


def test_the_stage_reloads_its_files_through_the_checks(workspace: Path, tmp_path: Path) -> None:
    # Had the stage's writer produced a SavedModel that writes a file when called, its reload refuses it.
    import hostile_models

    marker = tmp_path / "marker"
    hostile = hostile_models.saved_model_writing(tmp_path / "saved_model", marker)
    prelude = (
        "from pathlib import Path\nimport classifier.export.formats\n"
        f"classifier.export.formats.export_all = lambda *a: {{'saved_model': Path({str(hostile)!r})}}\n"
    )
    result = run_stage(workspace, "models/export", "metrics/hostile", prelude)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {hostile}/saved_model.pb: refused: op WriteFile"
    )
    assert "Traceback" not in result.stderr and not marker.exists()


def test_a_bad_export_param_fails_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    set_params(tmp_path, {"export.calibration_images": 0})
    result = run_stage(tmp_path, "models/export", "metrics/export")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: params.yaml: export.calibration_images = 0 is not accepted; expected an integer from 1 to 1000000"
    )


def test_dvc_yaml_lists_exactly_the_files_the_stage_imports_and_its_params() -> None:
    stage = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["export"]
    code = {Path(dep) for dep in stage["deps"] if re.match(r"(stages|classifier)/.*\.py$", dep)}
    assert code == project_imports(PROJECT, "stages.export")
    assert stage["params"] == ["seed", "train.threads", "export"]
    assert {"models/model.keras", "data/prepared/train.npz", "data/prepared/test.npz"} <= set(stage["deps"])
