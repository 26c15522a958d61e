"""classifier/seeds_report.py on saved `dvc exp show --json` output, in the shape DVC 3.67 writes it (copied
from a real queue of seeds on tiny data: a workspace entry, the baseline commit and its experiments)."""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from classifier import seeds_report
from classifier.core.dotted_keys import set_dotted

from conftest import PROJECT

PARAMS = yaml.safe_load((PROJECT / "params.yaml").read_text())
BASELINE = "31184c05b4d04deccd4a176aca3b883b50b26aad"
ENVIRONMENT = {
    "cpu": "AMD EPYC", "cpu_family_model": "25/1", "gpus": 0, "instruction_sets": "sse4_2 avx fma avx2",
    "inter_op_threads": 2, "intra_op_threads": 2, "keras": "3.15.1", "machine": "x86_64", "numpy": "2.4.6",
    "onednn": "default", "python": "3.11.7", "tensorflow": "2.21.0", "widest_vectors": "AVX2",
}  # fmt: skip
ZEN4 = ENVIRONMENT | {"cpu_family_model": "25/17", "widest_vectors": "AVX-512",
                      "instruction_sets": "sse4_2 avx fma avx2 avx512f avx512bw avx512vl avx512_vnni"}  # fmt: skip
DEPS = {
    "stages/train.py": {"hash": "741fba8088784f85993ae532f092cade", "size": 4410, "nfiles": None},
    "classifier/training/callbacks.py": {
        "hash": "cd0b5e723c836827777289e2881d1264",
        "size": 6108,
        "nfiles": None,
    },
    "data/prepared/train.npz": {"hash": "63e55c3be092439e5ea1fc0bad0ca55d", "size": 276794, "nfiles": None},
}
MISSING = {"type": "FileNotFoundError", "msg": "[Errno 2] No such file or directory: '{}'"}


def rev_of(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def experiment(
    name: str,
    seed: int,
    test: float | None = 0.5,
    best: float | None = 0.5,
    *,
    state: str = "success",
    environment: dict | None = ENVIRONMENT,
    epochs: int = 2,
    deps: dict = DEPS,
    seconds: float | None = None,
    **params: Any,
) -> dict:
    """One entry of a commit's "experiments" list; `params` as dotted keys ('model.learning_rate')."""
    values = copy.deepcopy(PARAMS) | {"seed": seed}
    for dotted, value in params.items():
        set_dotted(values, dotted, value)
    found = {
        "metrics/evaluate/metrics.json": None if test is None else {"accuracy": test, "loss": 1.0, "top_3_accuracy": 0.9},
        "metrics/train/best.json": None if best is None else {"best": {"accuracy": 0.7, "epoch": epochs, "loss": 0.8,
                                                                        "val_accuracy": best, "val_loss": 0.9}},
        "metrics/train/metrics.json": {"train": {"accuracy": 0.7, "loss": 0.8}, "eval": {"accuracy": 0.6, "loss": 0.9},
                                       "step": epochs - 1},
        "metrics/train/environment.json": None if environment is None else {"environment": environment},
        "metrics/timing/train.json": None if seconds is None else {"seconds": seconds},
    }  # fmt: skip
    failed = state == "failed"
    metrics = {} if state == "queued" else {
        path: {"error": {**MISSING, "msg": MISSING["msg"].format(path)}} if value is None or failed else {"data": value}
        for path, value in found.items()
    }  # fmt: skip
    rev = rev_of(name)
    log = f"/repo/.dvc/tmp/exps/run/{rev}/{rev}.out"
    return {
        "executor": {"state": state, "name": None if failed else "dvc-task",
                     "local": {"root": None, "log": None if state == "queued" else log, "pid": 1635,
                               "returncode": {"success": 0, "failed": 255}.get(state), "task_id": rev}},
        "name": name,
        "revs": [{"rev": rev, "name": name,
                  "data": {"rev": rev, "timestamp": "2026-12-01T09:30:54", "params": {"params.yaml": {"data": values}},
                           "metrics": metrics, "deps": deps, "outs": {}, "meta": {}},
                  "error": {"msg": "Experiment run failed", "type": ""} if failed else None, "experiments": None}],
    }  # fmt: skip


def show(*experiments: dict) -> list[dict]:
    """`dvc exp show --json`: the workspace, then the baseline commit holding the experiments."""
    nothing = {
        path: {"error": MISSING} for path in ("metrics/evaluate/metrics.json", "metrics/train/best.json")
    }
    workspace = {"rev": "workspace", "timestamp": None, "params": {"params.yaml": {"data": PARAMS}},
                 "metrics": nothing, "deps": {}, "outs": {}, "meta": {}}  # fmt: skip
    return [
        {"rev": "workspace", "name": None, "data": workspace, "error": None, "experiments": None},
        {"rev": BASELINE, "name": "main", "data": {**workspace, "rev": BASELINE, "timestamp": "2026-12-01T09:25:34"},
         "error": None, "experiments": list(experiments)},
    ]  # fmt: skip


def rows(text: str) -> list[dict[str, str]]:
    """The Markdown table as dicts by column header (a repeated header gets a 2 appended)."""
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    header: list[str] = []
    for name in (cell.strip() for cell in lines[0].strip("|").split("|")):
        header.append(name + "2" if name in header else name)
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def run_report(shown: list[dict]) -> str:
    runs, skipped = seeds_report.read_runs(shown)
    return seeds_report.report(seeds_report.group_runs(runs, skipped), skipped)


def test_seeds_of_one_config_are_pooled_and_configs_are_rows() -> None:
    tests, bests = [0.60, 0.62, 0.67], [0.61, 0.63, 0.66]
    shown = show(
        *(experiment(f"a{s}", s, t, b, epochs=e, seconds=seconds, **{"model.learning_rate": 0.001})
          for s, t, b, e, seconds in zip((1, 2, 3), tests, bests, (50, 54, 100), (10.0, 30.0, 20.0))),
        experiment("b1", 1, 0.55, 0.56, **{"model.learning_rate": 0.002}),
        experiment("b2", 2, 0.57, 0.58, **{"model.learning_rate": 0.002}),
    )  # fmt: skip
    text = run_report(shown)  # train time: the median of metrics/timing/train.json
    first, second = rows(text)
    assert first["learning_rate"] == "0.001" and second["learning_rate"] == "0.002"
    assert first["seeds"] == "3 (1, 2, 3)" and second["seeds"] == "2 (1, 2)"
    assert (
        first["test accuracy"]
        == f"{statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f}"
        == "0.6300 ± 0.0361"
    )
    assert first["min"] == "0.6000" and first["min2"] == "0.6100"
    assert first["best val accuracy"] == f"{statistics.mean(bests):.4f} ± {statistics.stdev(bests):.4f}"
    assert first["epochs"] == "54" and first["train time"] == "20.0 s" and second["train time"] == "n/a"
    assert first["machine"] == "AMD EPYC 25/1 AVX2"
    assert "Skipped" not in text and "never pooled" not in text
    assert "train time: n/a for runs without metrics/timing/train.json" in text  # the b runs have none


def test_a_single_seed_has_no_spread_and_the_table_needs_no_param_columns() -> None:
    [row] = rows(run_report(show(experiment("only", 7, 0.5, 0.52))))
    assert (
        row["seeds"] == "1 (7)" and row["test accuracy"] == "0.5000" and row["best val accuracy"] == "0.5200"
    )
    assert list(row)[0] == "machine", "one group: no param tells groups apart"


def test_two_machines_or_two_versions_are_never_pooled() -> None:
    shown = show(experiment("avx2-1", 1, 0.56), experiment("avx2-2", 2, 0.58), experiment("zen4-1", 1, 0.66, environment=ZEN4),
                 experiment("tf-1", 1, 0.60, environment=ENVIRONMENT | {"tensorflow": "2.20.0"}))  # fmt: skip
    text = run_report(shown)
    found = {(row["machine"], row["tensorflow"]): row for row in rows(text)}
    assert set(found) == {
        ("AMD EPYC 25/1 AVX2", "2.21.0"),
        ("AMD EPYC 25/17 AVX-512", "2.21.0"),
        ("AMD EPYC 25/1 AVX2", "2.20.0"),
    }
    assert found["AMD EPYC 25/1 AVX2", "2.21.0"]["seeds"] == "2 (1, 2)"
    assert found["AMD EPYC 25/17 AVX-512", "2.21.0"]["seeds"] == "1 (1)"
    assert "instruction_sets" in rows(text)[0] and "never pooled" in text


def test_other_code_is_another_group() -> None:
    edited = DEPS | {"classifier/training/callbacks.py": {"hash": "0" * 32, "size": 6200, "nfiles": None}}
    data = DEPS | {"data/prepared/train.npz": {"hash": "1" * 32, "size": 276794, "nfiles": None}}
    shown = show(
        experiment("old", 1), experiment("new", 2, deps=edited), experiment("other-data", 3, deps=data)
    )
    found = rows(run_report(shown))
    assert len(found) == 2 and sorted(row["seeds"] for row in found) == ["1 (2)", "2 (1, 3)"]
    assert all(len(row["code"]) == 7 for row in found), "data deps differ by seed; code deps must not"


def test_experiments_without_results_are_skipped_not_pooled() -> None:
    shown = show(
        experiment("good", 1, 0.6),
        experiment("waiting", 5, state="queued"),
        experiment("broken", 42, state="failed"),
        experiment("old-code", 3, best=None),
        experiment("no-env", 4, environment=None),
        experiment("again", 1, 0.6),
    )
    text = run_report(shown)
    [row] = rows(text)
    assert row["seeds"] == "1 (1)"
    skipped = text.split("Skipped (not pooled):\n")[1].splitlines()
    assert skipped == [
        f"- `waiting` ({rev_of('waiting')[:7]}): queued",
        f"- `broken` ({rev_of('broken')[:7]}): failed",
        f"- `old-code` ({rev_of('old-code')[:7]}): no metrics/train/best.json",
        f"- `no-env` ({rev_of('no-env')[:7]}): no metrics/train/environment.json: its machine is unknown",
        f"- `again` ({rev_of('again')[:7]}): seed 1 again, as in good: counted once",
    ]


def test_nothing_to_report() -> None:
    text = run_report(show(experiment("waiting", 5, state="queued")))
    assert text.startswith("No experiment with metrics to report.") and "`waiting`" in text


def test_keys_are_shortened_to_their_unique_tail() -> None:
    keys = ["model.dropout", "train.augment.flip", "a.x.size", "b.x.size", "train.epochs"]
    assert seeds_report.short_names(keys) == {
        "model.dropout": "dropout", "train.augment.flip": "flip", "a.x.size": "a.x.size", "b.x.size": "b.x.size",
        "train.epochs": "epochs",
    }  # fmt: skip


def test_command_reads_a_saved_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    saved = tmp_path / "exps.json"
    saved.write_text(json.dumps(show(experiment("a", 1, 0.6, 0.61), experiment("b", 2, 0.64, 0.65))))
    monkeypatch.chdir(tmp_path)
    seeds_report.main(["--json", str(saved)])
    [row] = rows(capsys.readouterr().out)
    assert (
        row["seeds"] == "2 (1, 2)"
        and row["test accuracy"] == "0.6200 ± 0.0283"
        and row["train time"] == "n/a"
    )


def test_train_time_reads_as_the_train_stage_prints_it() -> None:
    # One duration format (classifier/training/timing.py describe): seconds, then minutes from 120 s.
    assert seeds_report.duration([30.0, 40.0, 50.0]) == "40.0 s"
    assert seeds_report.duration([1938.0, None]) == "32.3 min (1 of 2)"


def test_the_report_loads_neither_numpy_nor_tensorflow() -> None:
    code = "import json, sys, classifier.seeds_report; print(json.dumps([m for m in sys.modules if '.' not in m]))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert not {"numpy", "tensorflow", "keras", "pandas"} & set(json.loads(result.stdout)), result.stdout
