"""The build_and_compile stage's command: its outputs are byte-identical run to run; with model.whitening it
fits the whitening layer on the training split it is given, and refuses to run without one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from classifier.core.errors import StageError
from classifier.data.splits import load_split

from conftest import PROJECT, tool_env, write_tiny_splits

COMMAND = [sys.executable, "-m", "stages.build_and_compile", "classes.json", "compiled.keras", "summary.txt"]


def whitening_params(work: Path) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["model"]["whitening"] = 40
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_build_and_compile_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    """Keras stamps dates and object ids into .keras files; ours must not change between processes. A third
    process, run alongside, fits a whitening layer."""
    processes = []
    for run in ("a", "b", "whitened"):  # at once: about the wall time of one on two cores
        work = tmp_path / run
        work.mkdir()
        shutil.copy(PROJECT / "params.yaml", work / "params.yaml")
        (work / "classes.json").write_text('["cat", "dog", "bird"]')
        extra = []
        if run == "whitened":
            whitening_params(work)
            write_tiny_splits(work, seed=4)
            extra = ["--train-split", "train.npz"]
        processes.append(subprocess.Popen(
            COMMAND + extra, cwd=work, env={**tool_env(), "PYTHONPATH": str(PROJECT)}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    for process in processes:
        output = process.communicate(timeout=240)[0]
        assert process.returncode == 0, output
    outputs = [(tmp_path / run / "compiled.keras").read_bytes() for run in ("a", "b")]
    assert outputs[0] == outputs[1]

    from classifier.model.saving import load_model
    from classifier.model.whitening import WHITENING_LAYER, fit_whitening

    whitened = tmp_path / "whitened"
    layer = load_model(whitened / "compiled.keras").get_layer(WHITENING_LAYER)
    expected = fit_whitening(load_split(whitened / "train.npz")[0], 40, 0.01)
    assert all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), expected, strict=True))
    assert "whitening (Dense)" in (whitened / "summary.txt").read_text()


def test_whitening_without_a_training_split_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """Refused before TensorFlow loads."""
    from stages.build_and_compile import main

    whitening_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", COMMAND[2:])
    with pytest.raises(
        StageError, match="^model.whitening = 40: pass the training split with --train-split$"
    ):
        main()
