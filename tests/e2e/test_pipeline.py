"""End to end: real `dvc repro` / `dvc exp run` on small generated data in throw-away git + DVC repos."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.core.files import read_json
from classifier.data.splits import load_split

from conftest import MINI_JPG, copy_repo, set_params, sh, sha256

pytestmark = pytest.mark.e2e
TIMEOUT = 900  # seconds a test may take: may build the shared pipeline

STAGES = ["download", "preprocess", "build_and_compile", "train", "evaluate", "plot", "export"]


@pytest.fixture(scope="module")
def http_archive(binary_archive: Path) -> Iterator[str]:
    """Serve the generated CIFAR-binary archive from a local HTTP server; yield its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(binary_archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{binary_archive.name}"
    server.shutdown()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, pipeline: Path, http_archive: str) -> Path:
    """A copy of the shared pipeline (every stage run), then downloading over HTTP: only download reruns."""
    repo = copy_repo(pipeline, tmp_path_factory.mktemp("pipeline") / "project")
    set_params(repo, {"download.url": http_archive})
    sh(repo, "git", "commit", "-qam", "download over http")
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == ["download"], (
        "same bytes: nothing after download reruns"
    )
    return repo


def ran_stages(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def test_repro_builds_every_output_metric_and_plot(built: Path, binary_archive: Path) -> None:
    assert (built / "data/raw/dataset.archive").read_bytes() == binary_archive.read_bytes()
    classes = read_json(built / "data/prepared/classes.json")
    assert classes == ["airplane", "automobile", "bird"]
    sizes = {
        split: len(load_split(built / f"data/prepared/{split}.npz")[1])
        for split in ("train", "validation", "test")
    }
    assert sizes == {"train": 270, "validation": 30, "test": 60}  # 5 batches of 60; 10% held out

    for name in ("compiled.keras", "model.keras", "summary.txt"):
        assert (built / "models" / name).stat().st_size > 0
    assert "hidden_1 (Dense)" in (built / "models/summary.txt").read_text()

    metrics = json.loads(sh(built, "dvc", "metrics", "show", "--json").stdout)
    values = metrics[""]["data"]
    train = values["metrics/train/metrics.json"]["data"]
    test = values["metrics/evaluate/metrics.json"]["data"]
    assert train["step"] == 1  # two epochs: steps 0 and 1
    assert set(train["train"]) == {"loss", "accuracy"} and set(train["eval"]) == {"loss", "accuracy"}
    assert test["accuracy"] > 0.6, "classes differ by colour: two epochs beat chance (1/3)"

    for split in ("train", "eval"):
        for metric in ("loss", "accuracy"):
            rows = (built / f"metrics/train/plots/metrics/{split}/{metric}.tsv").read_text().splitlines()
            assert rows[0].split("\t") == ["step", metric] and len(rows) == 3
    confusion = (built / "metrics/evaluate/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted,confidence" and len(confusion) == 61
    for name in ("loss.png", "accuracy.png"):
        with Image.open(built / "metrics/plots" / name) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 200


def test_second_repro_does_nothing(built: Path) -> None:
    result = sh(built, "dvc", "repro")
    assert ran_stages(result.stdout) == []
    assert "Data and pipelines are up to date." in sh(built, "dvc", "status").stdout


def test_changing_a_plot_param_reruns_only_plot(built: Path) -> None:
    before = (built / "models/model.keras").read_bytes()
    set_params(built, {"plot.dpi": 60})
    try:
        assert set(json.loads(sh(built, "dvc", "status", "--json").stdout)) == {"plot"}
        assert ran_stages(sh(built, "dvc", "repro").stdout) == ["plot"]
        with Image.open(built / "metrics/plots/loss.png") as image:
            assert image.width == 360  # 6 inches at 60 dpi
        assert (built / "models/model.keras").read_bytes() == before
    finally:
        sh(built, "git", "checkout", "params.yaml")
        sh(built, "dvc", "repro")


def flagged_after_editing(repo: Path, code_file: str) -> set[str]:
    """The stages `dvc status` says are out of date once `code_file` changes (the edit is undone after)."""
    path = repo / code_file
    before = path.read_bytes()
    path.write_bytes(before + b"\n# an edit\n")
    try:
        return set(json.loads(sh(repo, "dvc", "status", "--json").stdout))
    finally:
        path.write_bytes(before)


def test_editing_chart_code_flags_plot_alone(built: Path) -> None:
    assert flagged_after_editing(built, "classifier/reporting/charts.py") == {"plot"}


def test_editing_model_saving_code_never_flags_the_data_stages(built: Path) -> None:
    flagged = flagged_after_editing(built, "classifier/model/saving.py")
    assert flagged == {"build_and_compile", "train", "evaluate", "export"}
    assert not flagged & {"download", "preprocess"}


def test_editing_the_shared_error_code_flags_every_stage(built: Path) -> None:
    # The other side of the same promise: a file every stage imports reruns them all.
    assert flagged_after_editing(built, "classifier/core/errors.py") == set(STAGES)


def test_plots_show_writes_its_page(built: Path) -> None:
    sh(built, "dvc", "plots", "show", "-o", "page")
    page = (built / "page/index.html").read_text()
    for title in ("Loss per epoch", "Accuracy per epoch", "Confusion matrix (test)"):
        assert title in page
    assert "loss.png" in page and "accuracy.png" in page


def test_image_folder_path_on_real_cifar_jpegs(tmp_path: Path, fresh_project: Path) -> None:
    """The mini set of real CIFAR-10 JPEGs (100 train + 20 test per class) through download + preprocess."""
    if not MINI_JPG.exists():
        pytest.skip(f"{MINI_JPG} not present (only on the developers' and CI machines)")
    repo = copy_repo(fresh_project, tmp_path / "project")
    set_params(repo, {"download.url": str(MINI_JPG), "download.checksum": sha256(MINI_JPG)})
    sh(repo, "dvc", "repro", "preprocess")
    classes = read_json(repo / "data/prepared/classes.json")
    assert len(classes) == 10 and classes[0] == "airplane" and classes[-1] == "truck"
    train_images, train_labels = load_split(repo / "data/prepared/train.npz")
    _, validation_labels = load_split(repo / "data/prepared/validation.npz")
    test_images, test_labels = load_split(repo / "data/prepared/test.npz")
    assert train_images.shape == (900, 32, 32, 3) and train_images.dtype == np.uint8
    assert len(validation_labels) == 100 and test_images.shape == (200, 32, 32, 3)
    assert np.bincount(test_labels).tolist() == [20] * 10
    # The split is shuffled, not a prefix of one class: every class is in validation.
    assert len(set(validation_labels.tolist())) == 10
    assert 60 < train_images.mean() < 200  # real photos, not blank


def test_wrong_checksum_fails_clearly_and_writes_nothing(tmp_path: Path, fresh_project: Path) -> None:
    repo = copy_repo(fresh_project, tmp_path / "project")
    set_params(repo, {"download.checksum": "md5:" + "0" * 32})
    result = sh(repo, "dvc", "repro", "download", check=False)
    assert result.returncode != 0
    assert "checksum mismatch: expected md5:0000" in result.stderr + result.stdout
    assert not (repo / "data/raw/dataset.archive").exists()
