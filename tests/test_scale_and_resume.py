"""train.distribution (one process, local devices, several worker processes) and resuming a killed run."""

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

from tests.conftest import PROJECT, learnable_images, make_project, sh, tool_env
from classifier import distribute
from classifier.backup import Backup, DEFAULT_DIR, run_key
from classifier.errors import StageError
from classifier.model_files import load_model
from classifier.splits import save_split

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
from classifier.errors import run
from stages import train
sys.argv = ["train", *sys.argv[1:]]
run(train.main)
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compiled tiny model and train/validation splits, as build_and_compile and preprocess make them."""
    from classifier.model import build_model, compile_model
    from classifier.model_files import save_model
    from classifier.runtime import configure_tensorflow

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    for split, count in (("train", 256), ("validation", 64)):
        labels = rng.integers(0, 3, count)
        save_split(root / "data" / f"{split}.npz", learnable_images(labels), labels)
    configure_tensorflow(seed=42)
    model = build_model(32, 3, [32], "relu")
    compile_model(model, "adam", 0.001, "categorical_crossentropy")
    save_model(model, root / "compiled.keras")
    return root


def train_command(inputs: Path, script: list[str] | None = None) -> list[str]:
    paths = [str(inputs / "compiled.keras"), str(inputs / "data"), "model.keras", "metrics"]
    return [sys.executable, *(script or ["-m", "stages.train"]), *paths, "--backup-dir", "backup"]


def workdir(root: Path, distribution: str, epochs: int = EPOCHS) -> Path:
    """A folder to run the train stage in, with params.yaml set for the tiny model."""
    root.mkdir(parents=True)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"].update(epochs=epochs, batch_size=BATCH, threads=1, distribution=distribution, jit_compile=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def start(command: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=cwd, env={**tool_env(), "PYTHONPATH": str(PROJECT), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
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
        start(train_command(inputs), run, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
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
        start(train_command(inputs), run, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        for index, run in enumerate(runs)
    ]
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        finish_killing(processes)
    for process, output in zip(processes, outputs):
        assert process.returncode == 1, output
        assert "error: the workers differ in params.yaml or in the stage's input files" in output


def test_mirrored_strategy_on_two_cpu_devices_trains_like_one_device(inputs: Path, single_run: Path, tmp_path: Path) -> None:
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


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "is not accepted; expected JSON like"),
        ('{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}', "only 'worker' tasks"),
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "task index 2 is not one of the 2"),
    ],
)
def test_tf_config_mistakes_are_one_line_errors(tf_config: str | None, message: str) -> None:
    with pytest.raises(StageError, match=message):
        distribute.worker_from_tf_config({} if tf_config is None else {"TF_CONFIG": tf_config})


def test_tf_config_gives_the_worker_index() -> None:
    config = {"cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker", "index": 2}}
    assert distribute.worker_from_tf_config({"TF_CONFIG": json.dumps(config)}) == (2, 3)


def test_shuffle_order_depends_only_on_seed_and_epoch() -> None:
    """What makes a resumed run see the batches an uninterrupted one would: no hidden iteration state."""
    import tensorflow as tf

    from classifier.batches import index_batches

    epoch = tf.Variable(0, dtype=tf.int64)
    batches = index_batches(10, 4, seed=7, epoch=epoch)

    def order(number: int) -> list[int]:
        epoch.assign(number)
        return np.concatenate([b.numpy() for b in batches]).tolist()

    first, second, first_again = order(0), order(1), order(0)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second and first == first_again
    assert order(1) == [int(i) for b in index_batches(10, 4, seed=7, epoch=tf.constant(1, tf.int64)) for i in b]
    # 10 rows in batches of 4 over 3 replicas: the last batch of 2 rows cannot feed 3 replicas.
    assert [len(b) for b in index_batches(10, 4, replicas=3)] == [4, 4]
    assert [len(b) for b in index_batches(10, 4, replicas=2)] == [4, 4, 2]


def test_backup_keeps_the_last_two_whole_epochs_and_forgets_other_runs(inputs: Path, tmp_path: Path) -> None:
    model = load_model(inputs / "compiled.keras")
    metrics = tmp_path / "metrics"
    (metrics / "plots").mkdir(parents=True)
    backup = Backup(tmp_path / "backup", "run-a")
    assert backup.latest() == 0
    for epoch in (1, 2, 3):
        (metrics / "plots" / "loss.tsv").write_text(f"epochs {epoch}")
        backup.save(model, epoch, metrics)
    (backup.dir / "epoch-0004.tmp").mkdir()  # killed while writing the next one
    stale = Backup(tmp_path / "backup", "run-b")
    stale.save(model, 1, None)
    other_worker = Backup(tmp_path / "backup", "run-b", worker=1)
    other_worker.save(model, 1, None)
    assert backup.epochs() == [2, 3] and backup.latest() == 3

    backup.forget_other_runs()
    assert not stale.dir.exists() and not (backup.dir / "epoch-0004.tmp").exists()
    assert other_worker.dir.exists(), "each worker only cleans its own backups"
    backup.restore(model, 2, tmp_path / "restored")
    assert (tmp_path / "restored" / "plots" / "loss.tsv").read_text() == "epochs 2"
    assert backup.epochs() == [2], "a worker ahead of the others drops the epoch it redoes"
    backup.delete()
    assert not backup.dir.exists()


def test_run_key_changes_with_params_and_inputs(tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    data.write_bytes(b"one")
    params = {"seed": 1, "train": {"epochs": 2}, "plot": {"dpi": 100}}
    key = run_key(params, [data])
    assert run_key({**params, "plot": {"dpi": 50}}, [data]) == key, "params train does not read"
    assert run_key({**params, "seed": 2}, [data]) != key
    assert run_key({**params, "train": {"epochs": 3}}, [data]) != key
    data.write_bytes(b"two")
    assert run_key(params, [data]) != key


# ---------------------------------------------------------------------------------------------
# Resume: SIGKILL in the middle of `dvc repro`, then `dvc repro` again.
# ---------------------------------------------------------------------------------------------

RESUME_EPOCHS = 30


def tsv_steps(metrics: Path) -> list[int]:
    rows = (metrics / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    return [int(row.split("\t")[0]) for row in rows]


@pytest.mark.e2e
def test_killed_training_resumes_where_it_stopped_with_the_same_result(binary_archive: Path, tmp_path: Path) -> None:
    repo = make_project(tmp_path / "project", binary_archive, {"train.epochs": RESUME_EPOCHS})
    sh(repo, "dvc", "repro")
    uninterrupted = {
        "model": (repo / "models" / "model.keras").read_bytes(),
        "metrics": (repo / "metrics" / "train" / "metrics.json").read_text(),
        "loss": (repo / "metrics" / "train" / "plots" / "metrics" / "eval" / "loss.tsv").read_text(),
    }
    backups = repo / DEFAULT_DIR
    assert not backups.exists(), "a finished run deletes its backup"

    # Train again from scratch and kill dvc and the stage as soon as one epoch is backed up.
    process = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train"], cwd=repo, env=tool_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(backups.glob("*/epoch-*[0-9]")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert list(backups.glob("*/epoch-*[0-9]")), "no epoch was backed up before the stage ended"
    assert not (repo / "models" / "model.keras").exists(), "training finished before it could be killed"

    result = sh(repo, "dvc", "repro")
    resumed = [line for line in result.stdout.splitlines() if line.startswith("train: resuming after epoch")]
    assert resumed, result.stdout
    epoch = int(resumed[0].split()[4])
    assert 1 <= epoch < RESUME_EPOCHS
    assert f"Epoch {epoch + 1}/{RESUME_EPOCHS}" in result.stdout and f"Epoch {epoch}/{RESUME_EPOCHS}" not in result.stdout
    assert tsv_steps(repo / "metrics" / "train") == list(range(RESUME_EPOCHS)), "every epoch logged exactly once"
    assert (repo / "models" / "model.keras").read_bytes() == uninterrupted["model"]
    assert (repo / "metrics" / "train" / "metrics.json").read_text() == uninterrupted["metrics"]
    assert (repo / "metrics" / "train" / "plots" / "metrics" / "eval" / "loss.tsv").read_text() == uninterrupted["loss"]
    assert not backups.exists(), "the backup is deleted once the run finished"
    assert "train" not in sh(repo, "dvc", "status").stdout
    sh(repo, "git", "check-ignore", "--quiet", f"{DEFAULT_DIR}/any-run-worker-0")  # never committed either
