"""The evaluate stage's command and params."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from classifier.core.errors import StageError
from classifier.core.params import validate_params
from classifier.data.splits import save_split

from conftest import PROJECT, tool_env

LABELS = np.array([0, 0, 1, 2, 2])


def test_evaluate_params_are_checked():
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["evaluate"]["top_k"] = 0
    with pytest.raises(StageError, match=r"evaluate\.top_k = 0 is not accepted; expected an integer from 1"):
        validate_params(params)


def test_top_k_above_the_number_of_classes_is_a_one_line_error(tmp_path):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["evaluate"]["top_k"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    save_split(tmp_path / "test.npz", np.zeros((5, 32, 32, 3), np.uint8), LABELS)
    (tmp_path / "classes.json").write_text('["a", "b", "c", "d"]')
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-m", "stages.evaluate", "model.keras", ".", "out"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: params.yaml: evaluate.top_k = 5 is more than the 4 classes"
