"""The benchmark scripts run on tiny input (speed goals are measured by them, never by timed tests),
and the stages that do not train never import TensorFlow (importing it costs seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT, make_cifar_binary_archive, make_image_folder, tool_env

pytestmark = pytest.mark.e2e

STAGES = ["download", "preprocess", "build_and_compile", "train", "evaluate", "plot", "export"]


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=PROJECT, env=tool_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_train_speed_runs_on_tiny_data(tmp_path: Path) -> None:
    result = run_script("benchmarks/train_speed.py", "--tiny", "--json", str(tmp_path / "speed.json"))
    for line in (
        "epoch, median (s)",
        "samples/s",
        "GFLOP/s",
        "of TF GEMM ceiling",
        "peak RSS (MB)",
        "speed-up",
    ):
        assert line in result.stdout
    summary = json.loads((tmp_path / "speed.json").read_text())
    assert summary["data"] == "generated images"
    for kind in ("plain", "stage"):
        assert summary[kind]["epoch_seconds"] > 0 and summary[kind]["samples_per_second"] > 0
        assert 100 < summary[kind]["peak_rss_mb"] < 10_000  # measured per process
        assert 0 < summary[kind]["fraction_of_tf_gemm"] < 10
        assert summary[kind]["final_val_accuracy"] > 0.3  # 10 colour-coded classes: both learned
    assert summary["gemm_gflops"]["tf_step_shapes"] > 0 and summary["gemm_gflops"]["numpy_large"] > 0
    assert "floor of an epoch" in result.stdout and "CPU time per epoch, plain / stage" in result.stdout
    assert summary["cpu_speedup"] == pytest.approx(
        summary["plain"]["cpu_seconds_per_epoch"] / summary["stage"]["cpu_seconds_per_epoch"]
    )
    assert summary["floor_seconds"]["matmuls"] > 0 and summary["floor_seconds"]["optimizer"] > 0
    assert summary["three_x_epoch_seconds"] == pytest.approx(summary["plain"]["epoch_seconds"] / 3)
    assert summary["speedup"] == pytest.approx(
        summary["stage"]["samples_per_second"] / summary["plain"]["samples_per_second"]
    )


def test_train_speed_times_a_recipes_model(tmp_path: Path) -> None:
    result = run_script(
        "benchmarks/train_speed.py", "--tiny", "--recipe", "recipes/better-mlp.yaml", "--set", "batch_size=64",
        "--json", str(tmp_path / "speed.json"),
    )  # fmt: skip
    summary = json.loads((tmp_path / "speed.json").read_text())
    assert summary["recipe"] == "recipes/better-mlp.yaml" and "plain" not in summary
    assert (
        summary["model_params"]["hidden_units"] == [1024, 1024, 1024]
        and summary["train_params"]["batch_size"] == 64
    )
    assert summary["stage"]["epoch_seconds"] > 0 and 0 < summary["stage"]["fraction_of_tf_gemm"] < 10
    # Three hidden layers of 1024: 3072x1024 + 2 x 1024x1024 + 1024x10 multiply-adds forward, two more
    # passes back but for the images' gradient.
    forward = 2 * (3072 * 1024 + 2 * 1024 * 1024 + 1024 * 10)
    assert summary["training_mflop_per_sample"] * 1e6 == pytest.approx(3 * forward - 2 * 3072 * 1024)
    assert summary["floor_seconds"]["optimizer"] > 0 and "speed-up" not in result.stdout


def test_pipeline_timing_runs_every_stage_on_a_tiny_archive(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", train=10, test=4, ext="jpg")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="images")
    result = run_script(
        "benchmarks/pipeline_timing.py",
        "--archive",
        str(archive),
        "--epochs",
        "1",
        "--json",
        str(tmp_path / "timing.json"),
    )
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert list(timing["stages"]) == STAGES
    assert timing["epochs"] == 1
    assert all(stage["seconds"] > 0 and stage["peak_rss_mb"] > 10 for stage in timing["stages"].values())
    assert timing["total_seconds"] == pytest.approx(sum(s["seconds"] for s in timing["stages"].values()))
    assert len(timing["noop_seconds"]) == 3
    assert "no-op dvc repro" in result.stdout and all(name in result.stdout for name in STAGES)


# Runs a stage's module as `python -m` would, then reports whether TensorFlow got imported.
IMPORT_CHECK = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__")
print("tensorflow imported:", "tensorflow" in sys.modules or "keras" in sys.modules)
"""


def test_download_preprocess_and_plot_never_import_tensorflow(tmp_path: Path) -> None:
    archive = make_cifar_binary_archive(tmp_path / "cifar.tar.gz", per_batch=10, test=10)
    (tmp_path / "params.yaml").write_text(
        (PROJECT / "params.yaml")
        .read_text()
        .replace("url: https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", f"url: {archive}")
        .replace("checksum: md5:c32a1d4ab5d03f1284b67883e8d87530", "checksum: null")
    )
    metrics = tmp_path / "metrics"
    for folder in ("train", "eval"):
        for metric in ("loss", "accuracy"):
            path = metrics / "plots" / "metrics" / folder / f"{metric}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"step\t{metric}\n0\t{np.float32(0.5)}\n1\t0.25\n")
    rows = ["airplane,bird,0.6", "bird,bird,0.9"] * 5  # one row per test image (10)
    (tmp_path / "confusion.csv").write_text("actual,predicted,confidence\n" + "\n".join(rows) + "\n")
    commands = {  # in pipeline order: plot reads the classes.json that preprocess writes
        "stages.download": ["raw.archive"],
        "stages.preprocess": ["raw.archive", "prepared", "preprocess.json"],
        "stages.plot": [str(metrics), "confusion.csv", "prepared", "plots"],
    }
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}
    for module, args in commands.items():
        result = subprocess.run(
            [sys.executable, "-c", IMPORT_CHECK, module, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{module}: {result.stderr}"
        assert "tensorflow imported: False" in result.stdout, module
    assert (tmp_path / "prepared" / "train.npz").exists() and (tmp_path / "plots" / "loss.png").exists()


def test_stopping_rules_replays_a_noisy_curve_through_the_train_stages_early_stopping(tmp_path: Path) -> None:
    """A lucky epoch 5 of 20, then a climb past it from epoch 15: patience 3 stops after epoch 8 and keeps
    epoch 5; counting only from 0.8 of the epochs, or never stopping, keeps the last and best epoch."""
    curve = [0.30, 0.35, 0.40, 0.42, 0.60, 0.41, 0.45, 0.47, *(round(0.50 + 0.02 * i, 2) for i in range(12))]
    tsv = tmp_path / "accuracy.tsv"
    tsv.write_text("step\taccuracy\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(curve)))
    rules = {"p3": {"patience": 3}, "p3 from 0.8": {"patience": 3, "start_epoch": 0.8},
             "keep": {"patience": None, "keep_best": True}}  # fmt: skip
    code = (
        f"import sys; sys.path.insert(0, 'benchmarks'); sys.argv = ['x', '--epochs', '20', {str(tsv)!r}]\n"
        f"import stopping_rules; stopping_rules.RULES = {rules!r}; stopping_rules.main()\n"
    )
    rows = [
        line
        for line in run_script("-c", code).stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    assert rows[1:] == [
        "| p3 | 8, 5 (0.6000) | 0.6000 | 8.0 |",
        "| p3 from 0.8 | 20, 20 (0.7200) | 0.7200 | 20.0 |",
        "| keep | 20, 20 (0.7200) | 0.7200 | 20.0 |",
    ]
