"""Faults while training, through the real train stage: a damaged backup is dropped with one warning and
the run resumes from the one before; a disk filling up is one error line; either way the final model has
the bytes of an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from classifier.training.backup import damage

from conftest import PROJECT, tool_env

pytestmark = pytest.mark.e2e

EPOCHS = 10  # a few seconds of training: long enough to kill the stage midway


def train_command(inputs: Path) -> list[str]:
    paths = [str(inputs / "compiled.keras"), str(inputs / "data"), "model.keras", "metrics"]
    return [sys.executable, "-m", "stages.train", *paths, "--backup-dir", "backup"]


def workdir(root: Path) -> Path:
    """A folder to run the train stage in, with params.yaml set for the tiny model."""
    root.mkdir(parents=True)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"].update(epochs=EPOCHS, batch_size=32, threads=1, distribution="single", jit_compile=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def train(inputs: Path, run: Path) -> subprocess.CompletedProcess:
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}
    return subprocess.run(
        train_command(inputs), cwd=run, env=env, capture_output=True, text=True, timeout=300
    )


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def whole_backups(run: Path) -> list[Path]:
    return sorted(p for p in (run / "backup").glob("*/epoch-*") if p.name[len("epoch-") :].isdigit())


@pytest.fixture(scope="module")
def reference(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The model an uninterrupted run makes."""
    run = workdir(tmp_path_factory.mktemp("reference") / "run")
    result = train(inputs, run)
    assert result.returncode == 0, result.stderr
    assert not lines(result.stderr, "warning:")
    assert not (run / "backup").exists(), "a finished run deletes its backup"
    return (run / "model.keras").read_bytes()


@pytest.fixture(scope="module")
def killed(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The backup folder of a run killed (SIGKILL, no clean-up) once two epochs were backed up."""
    run = workdir(tmp_path_factory.mktemp("killed") / "run")
    process = subprocess.Popen(
        train_command(inputs),
        cwd=run,
        env={**tool_env(), "PYTHONPATH": str(PROJECT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(whole_backups(run)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (run / "model.keras").exists(), "training finished before it could be killed"
    backups = whole_backups(run)
    assert len(backups) >= 2, "fewer than two epochs were backed up before the stage ended"
    return run / "backup"


def truncate(folder: Path) -> str:
    weights = folder / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "model.weights.h5 is truncated"


def remove_a_file(folder: Path) -> str:
    (folder / "metrics" / "metrics.json").unlink()
    return "metrics/metrics.json is missing"


def garble_the_manifest(folder: Path) -> str:
    (folder / "manifest.json").write_bytes(b"\x00garbled{")
    return "manifest.json is garbled"


@pytest.mark.parametrize("spoil", [truncate, remove_a_file, garble_the_manifest])
def test_a_damaged_backup_is_dropped_and_the_run_resumes_from_the_one_before(
    spoil, inputs: Path, reference: bytes, killed: Path, tmp_path: Path
) -> None:
    run = workdir(tmp_path / "run")
    shutil.copytree(killed, run / "backup")
    *older, previous, latest = whole_backups(run)
    for folder in older:  # the kill may have come while the oldest was being deleted: keep the last two
        shutil.rmtree(folder)
    assert damage(previous, int(previous.name[6:])) is None and damage(latest, int(latest.name[6:])) is None
    why = spoil(latest)

    result = train(inputs, run)
    assert result.returncode == 0, result.stderr
    [warning] = lines(result.stderr, "warning:")
    epoch = int(latest.name[6:])
    where = f"backup/{latest.parent.name}"
    assert warning.startswith(f"warning: {where}: backup of epoch {epoch} is damaged ({why}")
    assert warning.endswith("); dropped")
    assert lines(result.stdout, "train: resuming") == [
        f"train: resuming after epoch {epoch - 1} from {where}"
    ]
    assert f"Epoch {epoch}/{EPOCHS}" in result.stdout, "the dropped epoch is trained again"
    assert (run / "model.keras").read_bytes() == reference
    assert not (run / "backup").exists(), "a finished run deletes its backup"


def test_a_full_disk_while_backing_up_is_one_error_and_a_rerun_finishes_the_same(
    inputs: Path, reference: bytes, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    run = workdir(tmp_path / "run")
    disk = run / "backup"
    disk.mkdir()
    # Room for one backup (the weights and Adam's two slots: about the compiled model's size), not two.
    size = int(1.5 * (inputs / "compiled.keras").stat().st_size)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.decode().strip()}")
    try:
        result = train(inputs, run)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        [error] = lines(result.stderr, "error:")
        assert "epoch-0002: the disk is full (it needs" in error, error
        assert "Traceback" not in output and "HDF5" not in output, output
        assert [p.name for p in whole_backups(run)] == ["epoch-0001"] and not list(disk.glob("*/*.tmp"))
        assert not (run / "model.keras").exists()

        subprocess.run(["mount", "-o", f"remount,size={8 * size}", "tmpfs", str(disk)], check=True)
        result = train(inputs, run)
        assert result.returncode == 0, result.stdout + result.stderr
        assert lines(result.stdout, "train: resuming after epoch 1 ")
        assert not lines(result.stderr, "warning:") and not lines(result.stderr, "error:")
        assert (run / "model.keras").read_bytes() == reference
    finally:
        subprocess.run(["umount", str(disk)], check=True)
