"""The preprocess stage's command: byte-reproducible splits and counts, and `dvc repro` on an image folder with a bad image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from classifier.core.dotted_keys import set_dotted
from classifier.data.splits import load_split

from conftest import (
    PROJECT,
    copy_repo,
    folder_files,
    make_image_folder,
    set_params,
    sh,
    tar_of,
)  # fmt: skip


def run_stage(workdir: Path, raw: Path, overrides: dict | None = None) -> subprocess.CompletedProcess:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for dotted, value in (overrides or {}).items():
        set_dotted(params, dotted, value)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [sys.executable, "-m", "stages.preprocess", str(raw), "data/prepared", "metrics/preprocess.json"],
        cwd=workdir, env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_stage_outputs_are_byte_reproducible_and_counted(tmp_path: Path):
    files = folder_files(train=10)
    files["photos/test/bird/broken.png"] = b"oops"
    archive = tar_of(tmp_path / "a.tgz", files)
    outputs = []
    for run in ("one", "two"):
        workdir = tmp_path / run
        workdir.mkdir()
        result = run_stage(workdir, archive, {"preprocess.on_bad_image": "skip"})
        assert result.returncode == 0, result.stderr
        assert "warning: skipped photos/test/bird/broken.png: not a readable image" in result.stderr
        files = sorted(p for p in workdir.rglob("*") if p.is_file())
        outputs.append({p.relative_to(workdir).as_posix(): p.read_bytes() for p in files})
    assert outputs[0] == outputs[1]
    metrics = json.loads(outputs[0]["metrics/preprocess.json"])
    assert metrics == {
        "classes": 3, "train_images": 27, "validation_images": 3, "test_images": 6,
        "skipped_bad_images": 1, "ignored_files": 0,
    }  # fmt: skip
    images, labels = load_split(tmp_path / "one" / "data" / "prepared" / "test.npz")
    assert images.shape == (6, 32, 32, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.e2e
def test_dvc_repro_on_an_image_folder_with_a_bad_image(tmp_path: Path, fresh_project: Path):
    """download packs a folder, preprocess skips the bad photo, and `dvc metrics show` reports it."""
    photos = make_image_folder(tmp_path / "photos", train=8, test=2)
    (photos / "train" / "bird" / "broken.jpg").write_text("not a photo")
    repo = copy_repo(fresh_project, tmp_path / "repo")
    set_params(
        repo, {"download.url": str(photos), "download.checksum": None, "preprocess.on_bad_image": "skip"}
    )
    sh(repo, "dvc", "repro", "preprocess")
    metrics = json.loads((repo / "metrics" / "preprocess.json").read_text())
    assert metrics["skipped_bad_images"] == 1 and metrics["train_images"] + metrics["validation_images"] == 24
    shown = sh(repo, "dvc", "metrics", "show").stdout
    assert "metrics/preprocess.json" in shown and "skipped_bad_images" in shown
    assert "skipped photos" not in shown
