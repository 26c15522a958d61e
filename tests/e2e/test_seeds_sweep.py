"""`python -m classifier.seeds_report` on a real queue of two seeds (tiny data, 2 epochs each, -j 2)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

from conftest import copy_repo, set_params, sh

pytestmark = pytest.mark.e2e


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_a_queue_of_two_seeds_is_one_row(fresh_project: Path, tmp_path: Path) -> None:
    # A rate so low that 2 epochs leave the model near its initialisation: the seeds give different results.
    repo = copy_repo(fresh_project, tmp_path / "project")
    set_params(repo, {"train.threads": 1, "model.learning_rate": 0.00001})
    sh(repo, "git", "commit", "-qam", "one thread, a low rate")
    # Up to evaluate: the report reads the train and evaluate stages' metrics, never the charts or exports.
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "seed=1,2", "evaluate")
    sh(repo, "dvc", "exp", "run", "--run-all", "-j", "2")
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    runs = [exp["revs"][0]["data"] for commit in shown for exp in commit.get("experiments") or []]
    assert sorted(run["params"]["params.yaml"]["data"]["seed"] for run in runs) == [1, 2]
    tests = [run["metrics"]["metrics/evaluate/metrics.json"]["data"]["accuracy"] for run in runs]
    bests = [run["metrics"]["metrics/train/best.json"]["data"]["best"] for run in runs]
    seconds = [run["metrics"]["metrics/timing/train.json"]["data"]["seconds"] for run in runs]
    assert all(1 <= best["epoch"] <= 2 and set(best) == {"epoch", "val_accuracy", "val_loss", "accuracy", "loss"}
               for best in bests)  # fmt: skip

    report = sh(repo, sys.executable, "-m", "classifier.seeds_report").stdout
    print(report)  # the example in the docs (pytest -s)
    header, _, row = table_rows(report)
    values = dict(zip([name + "2" * header[:i].count(name) for i, name in enumerate(header)], row))
    assert values["seeds"] == "2 (1, 2)" and values["epochs"] == "2"
    assert values["test accuracy"] == f"{statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f}"
    assert (
        values["min"] == f"{min(tests):.4f}"
        and values["min2"] == f"{min(b['val_accuracy'] for b in bests):.4f}"
    )
    assert values["best val accuracy"].startswith(f"{statistics.mean(b['val_accuracy'] for b in bests):.4f}")
    assert values["machine"].split()[-1] in ("AMX", "AVX-512", "AVX2", "AVX", "none")
    assert values["train time"] == f"{statistics.median(seconds):.1f} s" and all(s > 0 for s in seconds)
    assert "Skipped" not in report and "n/a" not in report

    (repo / "exps.json").write_text(json.dumps(shown))
    assert sh(repo, sys.executable, "-m", "classifier.seeds_report", "--json", "exps.json").stdout == report
