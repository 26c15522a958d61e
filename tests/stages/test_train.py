"""The train stage's command: every epoch logged with DVCLive, and params that do not go together refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from classifier.core.errors import StageError
from classifier.model.runtime import cpu_facts

from conftest import PROJECT, tool_env


def test_train_stage_logs_every_epoch_with_dvclive(prepared: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"].update(epochs=3, batch_size=16)
    params["model"]["hidden_units"] = [16]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}

    def stage(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return result

    stage("stages.build_and_compile", str(prepared / "classes.json"), "compiled.keras", "summary.txt")
    result = stage("stages.train", "compiled.keras", str(prepared), "model.keras", "metrics")

    metrics = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert set(metrics["train"]) == {"loss", "accuracy"} and set(metrics["eval"]) == {"loss", "accuracy"}
    assert metrics["step"] == 2
    for series in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy"):
        rows = (tmp_path / "metrics" / "plots" / "metrics" / f"{series}.tsv").read_text().splitlines()
        assert len(rows) == 1 + 3, series  # header + one row per epoch: validation ran every epoch
    assert not (tmp_path / "metrics" / "dvc.yaml").exists()  # dvcyaml=False
    # Not a terminal: one line per epoch, no progress bar.
    assert result.stdout.count("val_loss") == 3
    assert "\x08" not in result.stdout and "━" not in result.stdout
    assert (tmp_path / "model.keras").stat().st_size > 0
    # The best epoch, as DVC metrics: the best row of the History Keras printed (no early stopping here).
    assert_best_epoch_is_the_historys_best(tmp_path / "metrics", result.stdout)
    # Where the result came from: two machines' experiments can be told apart (dvc metrics show).
    environment = json.loads((tmp_path / "metrics" / "environment.json").read_text())["environment"]
    assert (
        environment["tensorflow"] == tf_version()
        and environment["intra_op_threads"] == params["train"]["threads"]
    )
    assert environment["cpu"] and environment["widest_vectors"] in ("AMX", "AVX-512", "AVX2", "AVX", "none")


def printed_history(stdout: str) -> list[dict[str, float]]:
    """Keras' one line per epoch (`... - accuracy: 0.3444 - loss: 1.1097 - val_accuracy: ...`)."""
    lines = [line for line in stdout.splitlines() if "val_accuracy:" in line]
    return [{key: float(value) for key, value in re.findall(r"(\w+): ([0-9.]+)", line)} for line in lines]


def dvclive_rows(metrics: Path) -> list[dict[str, float]]:
    """Every epoch DVCLive logged, as Keras names the values."""
    names = {
        "accuracy": "train/accuracy",
        "loss": "train/loss",
        "val_accuracy": "eval/accuracy",
        "val_loss": "eval/loss",
    }
    columns = {}
    for key, series in names.items():
        rows = (metrics / "plots" / "metrics" / f"{series}.tsv").read_text().splitlines()[1:]
        columns[key] = [float(row.split("\t")[-1]) for row in rows]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def assert_best_epoch_is_the_historys_best(
    metrics: Path, stdout: str, epochs_printed: int | None = None
) -> dict:
    """metrics/best.json holds the row of the highest val_accuracy (the earliest on ties), 1-based."""
    best = json.loads((metrics / "best.json").read_text())["best"]
    rows = dvclive_rows(metrics)
    epoch = max(range(len(rows)), key=lambda e: (rows[e]["val_accuracy"], -e))
    assert best == {"epoch": epoch + 1, **rows[epoch]}
    printed = printed_history(stdout)
    assert len(printed) == (epochs_printed if epochs_printed is not None else len(rows))
    first = len(rows) - len(printed)  # a resumed run prints only the epochs after the resume
    for row, line in zip(rows[first:], printed):
        assert row == pytest.approx({key: line[key] for key in row}, abs=5e-5)
    return best


KILLED_AFTER_EPOCH_2 = """
import os, sys
from classifier.training import backup
save = backup.Backup.save
def save_then_die(self, model, epoch, *args, **kwargs):
    save(self, model, epoch, *args, **kwargs)
    if epoch == 2:
        os._exit(9)  # as if killed right after the backup of epoch 2
backup.Backup.save = save_then_die
from classifier.core.errors import run
from stages import train
sys.argv = ["train", *sys.argv[1:]]
run(train.main)
"""


def test_best_epoch_with_early_stopping_and_after_a_resume(prepared: Path, tmp_path: Path) -> None:
    """Early stopping ends the run before train.epochs; a run killed after epoch 2 and resumed records the
    same best epoch (from DVCLive's logs of every epoch, not the resumed History alone)."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"].update(epochs=8, batch_size=16, threads=1, early_stopping=1)
    params["model"]["hidden_units"] = [16]
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}

    def stage(where: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, *args], cwd=where, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == code, result.stderr
        return result

    runs = {}
    for name in ("whole", "resumed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.yaml").write_text(yaml.safe_dump(params))
    stage(
        tmp_path / "whole",
        "-m",
        "stages.build_and_compile",
        str(prepared / "classes.json"),
        "compiled.keras",
        "summary.txt",
    )
    paths = [str(tmp_path / "whole" / "compiled.keras"), str(prepared), "model.keras", "metrics", "--backup-dir", "backup",
             "--timing", "timing/train.json"]  # fmt: skip
    runs["whole"] = stage(tmp_path / "whole", "-m", "stages.train", *paths)
    whole = assert_best_epoch_is_the_historys_best(tmp_path / "whole" / "metrics", runs["whole"].stdout)
    assert 2 < len(dvclive_rows(tmp_path / "whole" / "metrics")) < 8, (
        "early stopping ended the run after epoch 2"
    )

    stage(tmp_path / "resumed", "-c", KILLED_AFTER_EPOCH_2, *paths, code=9)
    runs["resumed"] = stage(tmp_path / "resumed", "-m", "stages.train", *paths)
    assert "train: resuming after epoch 2" in runs["resumed"].stdout
    epochs = len(dvclive_rows(tmp_path / "whole" / "metrics"))
    resumed = assert_best_epoch_is_the_historys_best(
        tmp_path / "resumed" / "metrics", runs["resumed"].stdout, epochs - 2
    )
    assert resumed == whole
    assert dvclive_rows(tmp_path / "resumed" / "metrics") == dvclive_rows(tmp_path / "whole" / "metrics")
    # The epochs' times carry across the resume in the backups: every epoch is counted once.
    for name in ("whole", "resumed"):
        timing = json.loads((tmp_path / name / "timing/train.json").read_text())
        assert re.search(rf"^train: {epochs} epochs in ([\d.]+) s ", runs[name].stdout, re.MULTILINE)
        assert float(re.search(r"epochs in ([\d.]+) s", runs[name].stdout)[1]) == timing["seconds"] > 0


def tf_version() -> str:
    from importlib.metadata import version

    return version("tensorflow-cpu")


def test_cpu_facts_tell_cpu_generations_and_instruction_sets_apart() -> None:
    zen3 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx fma avx2\n"
    zen4 = zen3.replace("model\t\t: 1", "model\t\t: 17").replace("avx2", "avx2 avx512f avx512bw avx512_vnni")
    assert cpu_facts(zen3) == {
        "cpu": "AMD EPYC", "cpu_family_model": "25/1", "instruction_sets": "sse4_2 avx fma avx2", "widest_vectors": "AVX2",
    }  # fmt: skip
    assert cpu_facts(zen4)["cpu_family_model"] == "25/17" and cpu_facts(zen4)["widest_vectors"] == "AVX-512"
    assert "avx512_vnni" in cpu_facts(zen4)["instruction_sets"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": {"label_smoothing": 0.1, "loss": "sparse_categorical_crossentropy"}}, "model.label_smoothing = 0.1 needs model.loss: categorical_crossentropy"),
        ({"train": {"augment": {"flip": False, "crop_padding": 0, "mixup": 0.2}}, "model": {"loss": "sparse_categorical_crossentropy"}}, "train.augment.mixup = 0.2 needs model.loss: categorical_crossentropy (got sparse_categorical_crossentropy); set mixup to 0 or change the loss"),
        ({"model": {"whitening": 3073}}, "model.whitening = 3073 is more components than an image has values (3072 at preprocess.image_size = 32); set it from 1 to 3072, or 0"),
        ({"model": {"shift_average": 32}}, "model.shift_average = 32 pixels would shift the whole image out of view at preprocess.image_size = 32; set it from 0 (off) to 31"),
        ({"train": {"warmup_epochs": 2}}, "train.warmup_epochs = 2 needs train.lr_schedule: cosine"),
        ({"train": {"warmup_epochs": 50, "lr_schedule": "cosine"}}, "train.warmup_epochs = 50 must be less than train.epochs = 50"),
        ({"train": {"early_stopping_from": 0.8}}, "train.early_stopping_from = 0.8 needs train.early_stopping: N (got null); set early_stopping_from to 0, or early_stopping to a patience"),
        ({"train": {"early_stopping_min_delta": 0.01}}, "train.early_stopping_min_delta = 0.01 needs train.early_stopping: N (got null)"),
        ({"train": {"early_stopping_smoothing": 0.9}}, "train.early_stopping_smoothing = 0.9 needs train.early_stopping: N (got null)"),
    ],
)  # fmt: skip
def test_params_that_do_not_go_together_are_refused(overrides: dict, message: str) -> None:
    import yaml

    from classifier.core.params import check_combinations, validate_params

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for group, values in overrides.items():
        params[group].update(values)
    typed = validate_params(params)
    with pytest.raises(StageError, match=re.escape(message)):
        check_combinations(typed)
