"""End to end: the model registry. Clone A runs the pipeline (export included) on tiny data, registers the
artifacts with GTO and pushes git + DVC; B, a plain empty folder (no git, no DVC), fetches them by name
with `dvc artifacts get` and receives the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifier.export.litert import read_labels

from conftest import copy_repo, set_params, sh

pytestmark = pytest.mark.e2e
TIMEOUT = 900  # seconds a test may take: may build the shared pipeline


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, pipeline: Path) -> dict[str, Path]:
    """A bare git repo and a local DVC remote, and clone A (a copy of the shared pipeline, which ran every
    stage with export.calibration_images 64) that pushed both."""
    root = tmp_path_factory.mktemp("registry")
    sh(root, "git", "init", "-q", "--bare", "-b", "main", "origin.git")
    repo = copy_repo(pipeline, root / "a")
    # `dvc artifacts get` reads the data through the default remote of the repo's committed .dvc/config.
    sh(repo, "dvc", "remote", "add", "-d", "storage", str(root / "dvc-storage"))
    sh(repo, "git", "remote", "add", "origin", str(root / "origin.git"))
    assert "Running stage" not in sh(repo, "dvc", "repro", "export").stdout  # the copy is up to date
    sh(repo, "git", "add", "dvc.lock", ".dvc/config", "metrics")
    sh(repo, "git", "commit", "-qm", "trained and exported")
    # Versions and stages are GTO's annotated git tags: cifar-mlp-int8@v0.1.0, cifar-mlp-int8#prod#1.
    sh(repo, "gto", "register", "cifar-mlp", "--version", "v0.1.0")
    sh(repo, "gto", "register", "cifar-mlp-int8", "--version", "v0.1.0")
    sh(repo, "gto", "assign", "cifar-mlp-int8", "--version", "v0.1.0", "--stage", "prod")
    sh(repo, "git", "push", "-q", "origin", "main", "--tags")
    sh(repo, "dvc", "push", "-q")
    return {"a": repo, "origin": root / "origin.git", "root": root}


def test_a_plain_folder_gets_each_artifact_by_name_with_the_same_bytes(published: dict[str, Path]) -> None:
    b = published["root"] / "b"
    b.mkdir()
    origin, a = str(published["origin"]), published["a"]
    sh(b, "dvc", "artifacts", "get", origin, "cifar-mlp-int8")
    sh(b, "dvc", "artifacts", "get", origin, "cifar-mlp")
    assert sorted(p.name for p in b.iterdir()) == ["model.keras", "model_int8.tflite"]
    assert (b / "model_int8.tflite").read_bytes() == (a / "models/export/model_int8.tflite").read_bytes()
    assert (b / "model.keras").read_bytes() == (a / "models/model.keras").read_bytes()
    # The class names come inside the LiteRT file: an app needs nothing else.
    assert read_labels((b / "model_int8.tflite").read_bytes()) == ["airplane", "automobile", "bird"]


def test_an_artifact_is_found_by_version_and_by_stage(published: dict[str, Path]) -> None:
    origin, expected = (
        str(published["origin"]),
        (published["a"] / "models/export/model_int8.tflite").read_bytes(),
    )
    for option, value, out in (
        ("--rev", "v0.1.0", "by_version.tflite"),
        ("--stage", "prod", "by_stage.tflite"),
    ):
        folder = published["root"] / out.split(".")[0]
        folder.mkdir()
        sh(folder, "dvc", "artifacts", "get", origin, "cifar-mlp-int8", option, value, "-o", out)
        assert (folder / out).read_bytes() == expected, option


def test_the_export_metrics_are_a_dvc_metric_and_export_params_rerun_only_export(
    published: dict[str, Path],
) -> None:
    a = published["a"]
    metrics = json.loads(sh(a, "dvc", "metrics", "show", "--json").stdout)[""]["data"]
    export = metrics["metrics/export/metrics.json"]["data"]
    assert (
        export["litert_float32"]["top1_agreement"] == 1.0 and export["saved_model"]["top1_agreement"] == 1.0
    )
    # Every stage ran (the shared pipeline), so nothing is out of date: the param makes export alone so.
    before = json.loads(sh(a, "dvc", "status", "--json").stdout)
    assert before == {}
    set_params(a, {"export.calibration_images": 32})
    try:
        after = json.loads(sh(a, "dvc", "status", "--json").stdout)
        assert after == {**before, "export": [{"changed deps": {"params.yaml": {"export": "modified"}}}]}
    finally:
        sh(a, "git", "checkout", "params.yaml")
