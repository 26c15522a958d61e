"""Params named by dotted keys, as `dvc exp run -S` and `dvc exp show` name them: `train.augment.flip`
for `{"train": {"augment": {"flip": ...}}}` in params.yaml.

Used wherever nested params meet dotted names: a recipe turned into `-S key=value` options
(recipes/run.py), experiments compared param by param (classifier/seeds_report.py), and the tests'
overrides of params.yaml. No TensorFlow here.
"""

from __future__ import annotations

from typing import Any


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every leaf, in the order the nested mappings hold them.

    {'train': {'augment': {'flip': True}, 'epochs': 5}} -> {'train.augment.flip': True, 'train.epochs': 5};
    an empty mapping has no leaf, so it leaves no key.
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_dotted(params: dict[str, Any], dotted: str, value: Any) -> None:
    """Set the value of a dotted key in the nested `params`, in place, adding the missing mappings on
    the way (a recipe may name a section params.yaml leaves out; the params schema judges the result).

    A key on the way that holds a value rather than a mapping is an error, never overwritten.
    """
    *parents, leaf = dotted.split(".")
    node = params
    for depth, key in enumerate(parents):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            where = ".".join(parents[: depth + 1])
            raise TypeError(f"{dotted}: {where} holds {node!r}, not a mapping of params")
    node[leaf] = value
