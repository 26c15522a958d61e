"""Sweeps and sharing: a 2x2 grid (two seeds, two learning rates) on two parallel queue workers, the seeds
report of it (`python -m classifier.seeds_report`), then one experiment travels to a second clone through a
bare git repo and a local-folder DVC remote, and retrains there bit for bit."""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from classifier.core.files import atomic_path

from conftest import copy_repo, sh

pytestmark = pytest.mark.e2e
TIMEOUT = 1200  # seconds a test may take: the shared pipeline, then the grid

# (seed, model.learning_rate). At the low rate, 2 epochs leave a model near its initialisation: its two
# seeds give different results, and the seeds report a spread.
GRID = {(1, 0.00001), (1, 0.001), (2, 0.00001), (2, 0.001)}


def experiments(repo: Path) -> dict[str, dict[str, Any]]:
    """{name: {"params", "metrics", "outs", "state"}} for every experiment `dvc exp show --json` lists."""
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            data = exp["revs"][0]["data"]
            found[exp["name"]] = {
                "params": data["params"]["params.yaml"]["data"],
                "metrics": {path: value["data"] for path, value in data["metrics"].items()},
                "outs": {path: value["hash"] for path, value in data["outs"].items()},
                "state": (exp.get("executor") or {}).get("state"),
            }
    return found


def grid_point(exp: dict[str, Any]) -> tuple[int, float]:
    return exp["params"]["seed"], exp["params"]["model"]["learning_rate"]


def wait_for_queue(repo: Path, timeout: float = 600) -> None:
    """`dvc queue start` returns at once: poll until nothing is queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        status = sh(repo, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"queue not done after {timeout} s:\n{status}")
        time.sleep(3)
    failed = [line.split()[0] for line in status.splitlines() if " Failed" in line]
    logs = "".join(sh(repo, "dvc", "queue", "logs", task, check=False).stdout for task in failed)
    assert not failed, f"{status}\n{logs}"


def stop_queue_workers(repo: Path, timeout: float = 60) -> list[int]:
    """Stop the celery workers `dvc queue start` spawned; return the pids that would not stop."""
    sh(repo, "dvc", "queue", "stop", "--kill", check=False)
    pids = [
        json.loads(f.read_text())["pid"]
        for f in (repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.json")
    ]
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if is_running(pid)]) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def workspace(repo: Path) -> tuple[str, str, str]:
    return (
        sh(repo, "git", "rev-parse", "HEAD").stdout,
        sh(repo, "git", "status", "--porcelain", "--untracked-files=all").stdout,
        (repo / "params.yaml").read_text(),
    )


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Where a team shares work: a bare git repo and a DVC remote (a local folder here; S3 in real life)."""
    root = tmp_path_factory.mktemp("shared")
    sh(root, "git", "init", "-q", "--bare", "-b", "main", "origin.git")
    return {"git": root / "origin.git", "dvc": root / "dvc-storage"}


@pytest.fixture(scope="module")
def clone_a(tmp_path_factory: pytest.TempPathFactory, pipeline: Path, origin: dict[str, Path]) -> Path:
    """A copy of the shared pipeline with its run committed: the grid's runs reuse download, preprocess and
    build_and_compile from the cache and train from there."""
    repo = copy_repo(pipeline, tmp_path_factory.mktemp("a") / "project")
    sh(repo, "dvc", "remote", "add", "-d", "storage", str(origin["dvc"]))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "pipeline run, DVC remote")
    sh(repo, "git", "remote", "add", "origin", str(origin["git"]))
    sh(repo, "git", "push", "-q", "origin", "main")
    return repo


@pytest.fixture(scope="module")
def grid(clone_a: Path) -> Iterator[dict[str, Any]]:
    """Queue the 2x2 grid up to evaluate, run it on 2 parallel workers, and record the workspace before and
    after."""
    before = workspace(clone_a)
    sh(
        clone_a,
        "dvc",
        "exp",
        "run",
        "--queue",
        "-S",
        "seed=1,2",
        "-S",
        "model.learning_rate=0.00001,0.001",
        "evaluate",  # what the grid compares (metrics); charts and exports are the shared pipeline's to test
    )
    try:
        sh(clone_a, "dvc", "queue", "start", "-j", "2")
        wait_for_queue(clone_a)
        yield {"before": before, "after": workspace(clone_a), "experiments": experiments(clone_a)}
    finally:
        assert stop_queue_workers(clone_a) == [], "queue workers had to be killed"


def test_grid_runs_four_experiments_in_parallel_and_leaves_the_workspace_alone(grid: dict[str, Any]) -> None:
    runs = grid["experiments"]
    assert len(runs) == 4 and {grid_point(exp) for exp in runs.values()} == GRID
    for exp in runs.values():
        assert exp["state"] == "success"
        test = exp["metrics"]["metrics/evaluate/metrics.json"]
        assert 0 <= test["accuracy"] <= 1 and test["loss"] > 0
        assert exp["metrics"]["metrics/train/metrics.json"]["step"] == 1  # 2 epochs
    assert len({exp["outs"]["models/model.keras"] for exp in runs.values()}) == 4, "four different models"
    assert grid["after"] == grid["before"], "git HEAD, git status and params.yaml are as they were"


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_seeds_report_has_one_row_per_learning_rate(grid: dict[str, Any], clone_a: Path) -> None:
    runs = grid["experiments"]
    for exp in runs.values():
        best = exp["metrics"]["metrics/train/best.json"]["best"]
        assert 1 <= best["epoch"] <= 2 and set(best) == {
            "epoch",
            "val_accuracy",
            "val_loss",
            "accuracy",
            "loss",
        }

    report = sh(clone_a, sys.executable, "-m", "classifier.seeds_report").stdout
    print(report)  # the example in the docs (pytest -s)
    header, _, *rows = table_rows(report)
    assert len(rows) == 2 and "Skipped" not in report and "n/a" not in report
    names = [name + "2" * header[:i].count(name) for i, name in enumerate(header)]
    spreads = []
    for row in rows:
        values = dict(zip(names, row))
        rate = float(values["learning_rate"])
        seeds = [exp for exp in runs.values() if exp["params"]["model"]["learning_rate"] == rate]
        tests = [exp["metrics"]["metrics/evaluate/metrics.json"]["accuracy"] for exp in seeds]
        bests = [exp["metrics"]["metrics/train/best.json"]["best"]["val_accuracy"] for exp in seeds]
        seconds = [exp["metrics"]["metrics/timing/train.json"]["seconds"] for exp in seeds]
        assert values["seeds"] == "2 (1, 2)" and values["epochs"] == "2"
        assert values["test accuracy"] == f"{statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f}"
        spreads.append(statistics.stdev(tests))
        assert values["min"] == f"{min(tests):.4f}" and values["min2"] == f"{min(bests):.4f}"
        assert values["best val accuracy"].startswith(f"{statistics.mean(bests):.4f}")
        assert values["machine"].split()[-1] in ("AMX", "AVX-512", "AVX2", "AVX", "none")
        assert values["train time"] == f"{statistics.median(seconds):.1f} s" and all(s > 0 for s in seconds)

    assert max(spreads) > 0, "the low rate's seeds differ"

    shown = sh(clone_a, "dvc", "exp", "show", "--json").stdout
    (clone_a.parent / "exps.json").write_text(shown)
    saved = sh(
        clone_a, sys.executable, "-m", "classifier.seeds_report", "--json", str(clone_a.parent / "exps.json")
    )
    assert saved.stdout == report


def test_experiment_travels_to_another_clone_and_retrains_bit_for_bit(
    grid: dict[str, Any], clone_a: Path, origin: dict[str, Path], tmp_path: Path
) -> None:
    name, exp = next((n, e) for n, e in grid["experiments"].items() if grid_point(e) == (2, 0.001))
    sh(clone_a, "dvc", "exp", "push", "origin", name)  # the git ref, and its data to the DVC remote
    sh(clone_a, "dvc", "push")

    sh(tmp_path, "git", "clone", "-q", str(origin["git"]), "b")
    b = tmp_path / "b"
    sh(b, "dvc", "exp", "pull", "origin", name)
    assert experiments(b)[name]["metrics"] == exp["metrics"]
    sh(b, "dvc", "exp", "apply", name)
    sh(b, "dvc", "pull")
    assert json.loads(sh(b, "dvc", "status", "--json", "--with-deps", "evaluate").stdout) == {}
    params = yaml.safe_load((b / "params.yaml").read_text())
    assert (params["seed"], params["model"]["learning_rate"]) == (2, 0.001)
    assert (
        json.loads((b / "metrics/evaluate/metrics.json").read_text())
        == exp["metrics"]["metrics/evaluate/metrics.json"]
    )

    # Retrain alone, here, with no other job running: the bytes the parallel worker produced.
    output = sh(b, "dvc", "repro", "--force", "--single-item", "train").stdout
    assert "Running stage 'train'" in output
    assert json.loads(sh(b, "dvc", "status", "--json", "--with-deps", "evaluate").stdout) == {}, (
        "same model bytes: evaluate is up to date"
    )
    assert (
        json.loads((b / "metrics/train/metrics.json").read_text())
        == exp["metrics"]["metrics/train/metrics.json"]
    )


def test_temporary_files_are_unique_and_beside_their_output(tmp_path: Path) -> None:
    """Parallel jobs never share a temporary file: each write gets its own, in the output's folder."""
    target = tmp_path / "out" / "model.keras"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == target.parent
        first.write_text("one")
        second.write_text("two")
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["model.keras"]
