"""A full disk under a real `dvc repro`: the stage prints one line, `error: <path>: the disk is full ...`, no
traceback, leaves nothing half-written, and once there is room again `dvc repro` ends with the same bytes as
a run that never met a full disk.

The disk is a small tmpfs mounted over the stage's output folder (the test is skipped where mount is not
permitted), or over /dev/shm in a mount namespace of the stage's own, where the decoder processes'
semaphores live.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import assert_png, copy_repo, locked_outputs, make_image_folder, make_project, set_params, sh
from local_http import file_server

pytestmark = pytest.mark.e2e
TIMEOUT = 900  # seconds a test may take: may build the shared pipeline

PAGE = 4096  # tmpfs sizes are whole pages


@contextlib.contextmanager
def tmpfs(folder: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `folder` for the duration of the block."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)


@pytest.fixture(scope="module")
def fresh(fresh_project: Path) -> Path:
    """The project, nothing run yet (the session's shared one). Every project of this module is a copy of it
    or of `reference`: the code of all of them is the same, even while someone edits the working tree."""
    return fresh_project


@pytest.fixture(scope="module")
def reference(pipeline: Path) -> Path:
    """`fresh` after `dvc repro` (every stage, export included) on a disk with room: the shared pipeline,
    only read here."""
    return pipeline


def assert_one_disk_full_line(result: subprocess.CompletedProcess, path: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    full = rf"error: {re.escape(path)}: the disk is full( \(.*\))?; free some space and run the command again"
    assert re.fullmatch(full, errors[0]), output
    return errors[0]


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


PREPARED = ["classes.json", "test.npz", "train.npz", "validation.npz"]


def test_full_disk_while_preprocess_writes_its_splits(fresh: Path, reference: Path, tmp_path: Path) -> None:
    repo = copy_repo(fresh, tmp_path / "project")
    sh(repo, "dvc", "repro", "download")
    # Room for a quarter of train.npz, the first split written: the disk fills up in the middle of the zip.
    size = (reference / "data/prepared/train.npz").stat().st_size // 4 // PAGE * PAGE
    with tmpfs(repo / "data/prepared", size) as mount:
        result = sh(repo, "dvc", "repro", "preprocess", check=False)
        line = assert_one_disk_full_line(result, "data/prepared/train.npz")
        assert files_in(mount) == [], "a half-written split, or a temporary file, is left"
    assert not (repo / "metrics/preprocess.json").exists()
    print(line)

    sh(repo, "dvc", "repro", "preprocess")
    assert locked_outputs(repo) == {
        name: locked_outputs(reference)[name] for name in ("download", "preprocess")
    }
    for name in PREPARED:
        path = Path("data/prepared") / name
        assert (repo / path).read_bytes() == (reference / path).read_bytes(), name


@pytest.mark.parametrize("source", ["local file", "http"])
def test_full_disk_while_download_writes_the_archive(
    source: str, fresh: Path, reference: Path, binary_archive: Path, tmp_path: Path
) -> None:
    repo = copy_repo(fresh, tmp_path / "project")
    with file_server() as server:
        if source == "http":
            server.files[binary_archive.name] = binary_archive.read_bytes()
            set_params(repo, {"download.url": f"{server.url}/ok/{binary_archive.name}"})
        size = binary_archive.stat().st_size // 2 // PAGE * PAGE
        with tmpfs(repo / "data/raw", size) as mount:
            result = sh(repo, "dvc", "repro", "download", check=False)
            line = assert_one_disk_full_line(result, "data/raw/dataset.archive")
            assert files_in(mount) == [], "a half-written archive, or a temporary file, is left"
        print(line)
        sh(repo, "dvc", "repro", "download")
    assert locked_outputs(repo)["download"] == locked_outputs(reference)["download"]
    assert (repo / "data/raw/dataset.archive").read_bytes() == binary_archive.read_bytes()


def test_full_disk_while_plot_writes_its_charts(fresh: Path, reference: Path, tmp_path: Path) -> None:
    # Every stage up to evaluate as in `reference`, without training again; plot as if it never ran (no
    # charts, no dvc.lock entry, no run cache), so that it really runs rather than being restored from the cache.
    repo = copy_repo(reference, tmp_path / "project")
    shutil.rmtree(repo / ".dvc/cache/runs")
    for chart in (repo / "metrics/plots").iterdir():
        chart.unlink()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    del lock["stages"]["plot"]
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    # Room for loss.png, the first chart, and one more page: accuracy.png, the second, does not fit.
    first = reference / "metrics/plots/loss.png"
    size = (math.ceil(first.stat().st_size / PAGE) + 1) * PAGE
    assert (reference / "metrics/plots/accuracy.png").stat().st_size > PAGE
    with tmpfs(repo / "metrics/plots", size) as mount:
        assert set(json.loads(sh(repo, "dvc", "status", "--json").stdout)) == {"plot"}
        result = sh(repo, "dvc", "repro", "plot", check=False)
        line = assert_one_disk_full_line(result, "metrics/plots/accuracy.png")
        assert files_in(mount) == ["loss.png"], "a half-written chart, or a temporary file, is left"
        assert (mount / "loss.png").read_bytes() == first.read_bytes()  # written whole before the disk filled
        assert_png(mount / "loss.png")
    print(line)

    sh(repo, "dvc", "repro", "plot")
    assert locked_outputs(repo) == locked_outputs(reference)
    for chart in (reference / "metrics/plots").glob("*.png"):
        assert (repo / "metrics/plots" / chart.name).read_bytes() == chart.read_bytes(), chart.name


# The preprocess stage with a full /dev/shm, in a mount namespace of its own (the machine's stays as it is).
FULL_SHM = """
mount -t tmpfs -o size=4k tmpfs /dev/shm || exit 99
head -c 4096 /dev/zero > /dev/shm/filler 2>/dev/null
exec python -m stages.preprocess data/raw/dataset.archive data/prepared metrics/preprocess.json
"""


def test_full_dev_shm_stops_the_decoder_processes_with_one_line(tmp_path: Path) -> None:
    """multiprocessing's queues need semaphores, which Linux keeps as files in /dev/shm."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    folder = make_image_folder(tmp_path / "images", train=100, test=10)  # > 1 chunk: decoded in processes
    with tarfile.open(tmp_path / "images.tar", "w") as archive:
        archive.add(folder, arcname="images")
    repo = make_project(tmp_path / "project", tmp_path / "images.tar")
    sh(repo, "dvc", "repro", "download")
    result = sh(repo, "unshare", "--mount", "--propagation", "private", "sh", "-c", FULL_SHM, check=False)
    if result.returncode == 99 or "unshare failed" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {result.stderr.strip()}")
    line = assert_one_disk_full_line(result, "/dev/shm")
    assert not (repo / "data/prepared").exists() or files_in(repo / "data/prepared") == []
    print(line)
    sh(repo, "dvc", "repro", "preprocess")  # with the machine's /dev/shm
