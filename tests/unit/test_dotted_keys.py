"""classifier/core/dotted_keys.py: nested params to dotted keys and back, as DVC names them."""

from __future__ import annotations

import copy

import pytest
import yaml

from classifier.core.dotted_keys import flatten, set_dotted

from conftest import PROJECT

NESTED = {
    "seed": 1,
    "train": {"epochs": 5, "augment": {"flip": True, "crop": None}, "steps": [1, 2]},
    "empty": {},
}


def test_flatten_names_every_leaf_by_its_path_in_order() -> None:
    assert flatten(NESTED) == {
        "seed": 1,
        "train.epochs": 5,
        "train.augment.flip": True,
        "train.augment.crop": None,
        "train.steps": [1, 2],
    }
    assert list(flatten(NESTED)) == [
        "seed",
        "train.epochs",
        "train.augment.flip",
        "train.augment.crop",
        "train.steps",
    ]


def test_set_dotted_changes_one_leaf_in_place() -> None:
    params = copy.deepcopy(NESTED)
    set_dotted(params, "train.augment.flip", False)
    set_dotted(params, "seed", 7)
    assert params["train"]["augment"] == {"flip": False, "crop": None} and params["seed"] == 7
    set_dotted(params, "train.augment", {"flip": True})  # a whole section is a value too
    assert params["train"]["augment"] == {"flip": True}


def test_set_dotted_adds_missing_sections_but_never_overwrites_a_value_with_one() -> None:
    params = copy.deepcopy(NESTED)
    set_dotted(params, "export.formats.onnx", True)
    assert params["export"] == {"formats": {"onnx": True}}
    with pytest.raises(TypeError, match=r"train\.epochs\.max: train\.epochs holds 5, not a mapping"):
        set_dotted(params, "train.epochs.max", 3)
    assert params["train"]["epochs"] == 5


def test_every_dotted_key_of_params_yaml_sets_back_to_the_same_params() -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    rebuilt: dict = {}
    for dotted, value in flatten(params).items():
        set_dotted(rebuilt, dotted, value)
    assert rebuilt == params
