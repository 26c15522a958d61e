"""classifier/training/distribute.py: TF_CONFIG checks and the worker index."""

from __future__ import annotations

import json

import pytest

from classifier.core.errors import StageError
from classifier.training import distribute


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "is not accepted; expected JSON like"),
        (
            '{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
            "only 'worker' tasks",
        ),
        (
            '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
            "task index 2 is not one of the 2",
        ),
    ],
)
def test_tf_config_mistakes_are_one_line_errors(tf_config: str | None, message: str) -> None:
    with pytest.raises(StageError, match=message):
        distribute.worker_from_tf_config({} if tf_config is None else {"TF_CONFIG": tf_config})


def test_tf_config_gives_the_worker_index() -> None:
    config = {"cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker", "index": 2}}
    assert distribute.worker_from_tf_config({"TF_CONFIG": json.dumps(config)}) == (2, 3)
