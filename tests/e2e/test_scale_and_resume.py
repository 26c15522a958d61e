"""train.distribution (one process, local devices, several worker processes) and resuming a killed run, through the real train stage."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from classifier.model.saving import load_model
from classifier.training.backup import DEFAULT_DIR

from conftest import PROJECT, copy_repo, set_params, sh, tool_env

pytestmark = pytest.mark.e2e

EPOCHS = 2
BATCH = 32  # 256 training images: every global batch splits evenly over 2 replicas


# Replicas sum their gradients in another order than one process does: the largest weight difference
# measured here is 3.3e-7 (3.0e-6 if the single process used XLA, which the replicas never do).
WEIGHT_TOLERANCE = 1e-5


# Runs the train stage with the CPU split into two logical devices, as a machine with two GPUs would be.
TWO_CPU_DEVICES = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from classifier.core.errors import run
from stages import train
sys.argv = ["train", *sys.argv[1:]]
run(train.main)
"""


def train_command(inputs: Path, script: list[str] | None = None) -> list[str]:
    paths = [str(inputs / "compiled.keras"), str(inputs / "data"), "model.keras", "metrics"]
    return [sys.executable, *(script or ["-m", "stages.train"]), *paths, "--backup-dir", "backup"]


def workdir(root: Path, distribution: str, epochs: int = EPOCHS) -> Path:
    """A folder to run the train stage in, with params.yaml set for the tiny model."""
    root.mkdir(parents=True)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"].update(
        epochs=epochs, batch_size=BATCH, threads=1, distribution=distribution, jit_compile=False
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def start(command: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=cwd,
        env={**tool_env(), "PYTHONPATH": str(PROJECT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(processes: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Wait for every process to succeed and return their output; kill them all if any fails or hangs."""
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
        for process, output in zip(processes, outputs):
            assert process.returncode == 0, output
        return outputs
    finally:
        finish_killing(processes)


def finish_killing(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def weights(path: Path) -> list[np.ndarray]:
    return load_model(path).get_weights()


def assert_same_training(a: Path, b: Path, tolerance: float) -> None:
    for x, y in zip(weights(a / "model.keras"), weights(b / "model.keras")):
        np.testing.assert_allclose(x, y, atol=tolerance, rtol=0)
    metrics = [json.loads((run / "metrics" / "metrics.json").read_text()) for run in (a, b)]
    assert metrics[0]["step"] == metrics[1]["step"] == EPOCHS - 1
    for stage in ("train", "eval"):
        for name, value in metrics[0][stage].items():
            assert metrics[1][stage][name] == pytest.approx(value, abs=tolerance)


@pytest.fixture(scope="module")
def single_run(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = workdir(tmp_path_factory.mktemp("single") / "run", "single")
    finish([start(train_command(inputs), run)])
    return run


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_worker_processes_train_like_one_process(inputs: Path, single_run: Path, tmp_path: Path) -> None:
    """Each worker in its own folder, as on two machines: both finish, only worker 0 writes outputs."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    runs = [workdir(tmp_path / f"worker{index}", "multi_worker") for index in range(2)]
    processes = [
        start(
            train_command(inputs),
            run,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        for index, run in enumerate(runs)
    ]
    outputs = finish(processes)
    assert all(f"Epoch {EPOCHS}/{EPOCHS}" in output for output in outputs), outputs
    assert sorted(p.name for p in runs[0].iterdir()) == ["metrics", "model.keras", "params.yaml"]
    assert sorted(p.name for p in runs[1].iterdir()) == ["params.yaml"], "worker 1 wrote outputs"
    assert_same_training(single_run, runs[0], WEIGHT_TOLERANCE)


def test_workers_with_different_params_refuse_to_train(inputs: Path, tmp_path: Path) -> None:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    runs = [workdir(tmp_path / f"worker{index}", "multi_worker", epochs=EPOCHS + index) for index in range(2)]
    processes = [
        start(
            train_command(inputs),
            run,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        for index, run in enumerate(runs)
    ]
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        finish_killing(processes)
    for process, output in zip(processes, outputs):
        assert process.returncode == 1, output
        assert "error: the workers differ in params.yaml or in the stage's input files" in output


def test_mirrored_strategy_on_two_cpu_devices_trains_like_one_device(
    inputs: Path, single_run: Path, tmp_path: Path
) -> None:
    run = workdir(tmp_path / "mirrored", "mirrored")
    [output] = finish([start(train_command(inputs, ["-c", TWO_CPU_DEVICES]), run)])
    assert "2 replicas" in output, output
    assert_same_training(single_run, run, WEIGHT_TOLERANCE)


def test_batch_size_must_split_evenly_over_replicas(inputs: Path, tmp_path: Path) -> None:
    run = workdir(tmp_path / "odd", "mirrored")
    params = yaml.safe_load((run / "params.yaml").read_text())
    params["train"]["batch_size"] = 33
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    process = start(train_command(inputs, ["-c", TWO_CPU_DEVICES]), run)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 1
    assert "error: params.yaml: train.batch_size = 33 does not split evenly over the 2 replicas" in output


RESUME_EPOCHS = 30


def tsv_steps(metrics: Path) -> list[int]:
    rows = (metrics / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    return [int(row.split("\t")[0]) for row in rows]


@pytest.mark.timeout(900)  # may build the shared pipeline
def test_killed_training_resumes_where_it_stopped_with_the_same_result(
    pipeline: Path, tmp_path: Path
) -> None:
    # A copy of the shared pipeline: only train (and what follows it, never run here) is out of date.
    repo = copy_repo(pipeline, tmp_path / "project")
    set_params(repo, {"train.epochs": RESUME_EPOCHS})
    assert "Running stage 'train'" in sh(repo, "dvc", "repro", "train").stdout
    uninterrupted = {
        "model": (repo / "models" / "model.keras").read_bytes(),
        "metrics": (repo / "metrics" / "train" / "metrics.json").read_text(),
        "loss": (repo / "metrics" / "train" / "plots" / "metrics" / "eval" / "loss.tsv").read_text(),
    }
    backups = repo / DEFAULT_DIR
    assert not backups.exists(), "a finished run deletes its backup"

    # Train again from scratch and kill dvc and the stage as soon as one epoch is backed up.
    process = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "train"],
        cwd=repo,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while (
            not list(backups.glob("*/epoch-*[0-9]"))
            and process.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert list(backups.glob("*/epoch-*[0-9]")), "no epoch was backed up before the stage ended"
    assert not (repo / "models" / "model.keras").exists(), "training finished before it could be killed"

    result = sh(repo, "dvc", "repro", "train")
    resumed = [line for line in result.stdout.splitlines() if line.startswith("train: resuming after epoch")]
    assert resumed, result.stdout
    epoch = int(resumed[0].split()[4])
    assert 1 <= epoch < RESUME_EPOCHS
    assert (
        f"Epoch {epoch + 1}/{RESUME_EPOCHS}" in result.stdout
        and f"Epoch {epoch}/{RESUME_EPOCHS}" not in result.stdout
    )
    assert tsv_steps(repo / "metrics" / "train") == list(range(RESUME_EPOCHS)), (
        "every epoch logged exactly once"
    )
    assert (repo / "models" / "model.keras").read_bytes() == uninterrupted["model"]
    assert (repo / "metrics" / "train" / "metrics.json").read_text() == uninterrupted["metrics"]
    assert (
        repo / "metrics" / "train" / "plots" / "metrics" / "eval" / "loss.tsv"
    ).read_text() == uninterrupted["loss"]
    assert not backups.exists(), "the backup is deleted once the run finished"
    assert "train" not in json.loads(sh(repo, "dvc", "status", "--json").stdout)
    sh(repo, "git", "check-ignore", "--quiet", f"{DEFAULT_DIR}/any-run-worker-0")  # never committed either
