"""The train stage's command: every epoch logged with DVCLive, and params that do not go together refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from classifier.errors import StageError
from classifier.runtime import cpu_facts
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
    # Where the result came from: two machines' experiments can be told apart (dvc metrics show).
    environment = json.loads((tmp_path / "metrics" / "environment.json").read_text())["environment"]
    assert environment["tensorflow"] == tf_version() and environment["intra_op_threads"] == params["train"]["threads"]
    assert environment["cpu"] and environment["widest_vectors"] in ("AMX", "AVX-512", "AVX2", "AVX", "none")


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
        ({"train": {"warmup_epochs": 2}}, "train.warmup_epochs = 2 needs train.lr_schedule: cosine"),
        ({"train": {"warmup_epochs": 50, "lr_schedule": "cosine"}}, "train.warmup_epochs = 50 must be less than train.epochs = 50"),
    ],
)  # fmt: skip
def test_params_that_do_not_go_together_are_refused(overrides: dict, message: str) -> None:
    import yaml

    from classifier.params import check_combinations, validate_params

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for group, values in overrides.items():
        params[group].update(values)
    validate_params(params)
    with pytest.raises(StageError, match=message.replace(".", r"\.")):
        check_combinations(params)
