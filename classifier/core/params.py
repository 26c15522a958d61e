"""params.yaml: read it and check it against the schema (classifier/core/params_schema.py) before any stage
does real work; every mistake is one line naming the key, the value and what is accepted, with a
did-you-mean for typos."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import ValidationError

from classifier.core.errors import StageError
from classifier.core.params_schema import Params, Section, _says

PARAMS_FILE = "params.yaml"


def _section(field: Any) -> Any:
    kind = field.annotation
    return kind if isinstance(kind, type) and issubclass(kind, Section) else None


def _schema_of(model: type[Section]) -> dict[str, Any]:
    fields = model.model_fields.items()
    return {k: _schema_of(_section(f)) if _section(f) else _says(f.metadata).accepted for k, f in fields}


# Each key's accepted values in words, sections as nested dicts (the keys in order, for messages and tests).
SCHEMA: dict[str, Any] = _schema_of(Params)


def validate_params(params: Any) -> Params:
    """`params` (as read from YAML) as the typed Params; else StageError naming the key path, the bad value
    and what is accepted (the first mistake only)."""
    try:
        return Params.model_validate(params)
    except ValidationError as error:
        located = [_locate(params, e["loc"], e["type"], e["input"]) for e in error.errors(include_url=False)]
        raise StageError(_message(params, *min(located, key=lambda found: found[-1]))) from None


def _locate(params: Any, loc: tuple[Any, ...], kind: str, value: Any) -> tuple[Any, ...]:
    """The section holding the mistake, the key path, the key's field (None for a section), the mistake's
    kind and its place in the order a reader meets them: in each section unknown keys first, then each key."""
    model, path, field, node, order = Params, [], None, params, []
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:  # an unknown key, or a list index / union member below a key
            key = value if kind == "invalid_key" else part  # a non-string key is in the loc as a string
            if kind in ("extra_forbidden", "invalid_key") and isinstance(node, dict) and key in node:
                return model, path, key, "unknown", [*order, (0, list(node).index(key))]
            break
        path.append(part)
        order.append((1, list(model.model_fields).index(part)))
        node = node.get(part) if isinstance(node, dict) else None
        if not _section(field):
            break
        model, field = _section(field), None
    return model, path, field, kind, order


def _message(params: Any, model: Any, path: list[str], field: Any, kind: str, order: Any) -> str:
    where, keys = "".join(f"{key}." for key in path), ", ".join(model.model_fields)
    if kind == "unknown":
        hint = _did_you_mean_key(str(field), model.model_fields, where)
        return f"{PARAMS_FILE}: unknown key '{where}{field}'{hint} (accepted keys here: {keys})"
    if kind == "missing":
        expected = _says(field.metadata).accepted if field else f"a mapping with keys {keys}"
        return f"{PARAMS_FILE}: missing key '{where[:-1]}' (expected {expected})"
    value = params
    for key in path:
        value = value[key]
    if field is None:
        place = f"'{where[:-1]}'" if path else "the file"
        return f"{PARAMS_FILE}: {place} must be a mapping with keys {keys}; got {value!r}"
    says = _says(field.metadata)
    return (
        f"{PARAMS_FILE}: {where[:-1]} = {value!r} is not accepted; expected {says.accepted}"
        + _did_you_mean_name(value, says.names)
    )


def _key_paths(schema: dict[str, Any], where: str = "") -> Iterator[str]:
    for key, rule in schema.items():
        yield f"{where}{key}"
        if isinstance(rule, dict):
            yield from _key_paths(rule, f"{where}{key}.")


def _did_you_mean_key(key: str, siblings: Any, where: str) -> str:
    """The key's home in another section ('learning_rate' -> 'model.learning_rate'), else a look-alike
    sibling ('epoch' -> 'train.epochs'), else a look-alike anywhere."""
    homes = {path.rpartition(".")[2]: path for path in reversed(list(_key_paths(SCHEMA)))}
    if key in homes:
        return f"; did you mean '{homes[key]}'?"
    close = difflib.get_close_matches(key, list(siblings), n=1)
    if close:
        return f"; did you mean '{where}{close[0]}'?"
    close = difflib.get_close_matches(key, list(homes), n=1)
    return f"; did you mean '{homes[close[0]]}'?" if close else ""


def _did_you_mean_name(value: Any, names: tuple[Any, ...]) -> str:
    words = [str(name) for name in names]
    if not isinstance(value, str) or not words:
        return ""
    same_but_case = [word for word in words if word.lower() == value.lower()]
    close = same_but_case or difflib.get_close_matches(value, words, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class _ParamsLoader(yaml.SafeLoader):
    """Reads numbers as YAML 1.2 (and DVC) do: `1e-3` is the float 0.001, not the string '1e-3'."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_params(path: str | os.PathLike = PARAMS_FILE) -> Params:
    """Read and validate the whole params file, so a typo anywhere fails every stage at once.

    Stages call this first, before importing TensorFlow or reading data: a bad value fails in
    about a second instead of after minutes of work. Each value is as the file wrote it (an int stays
    an int where a float is accepted), so `model_dump()` gives back the file's mapping.
    """
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.load(f, Loader=_ParamsLoader)
    except FileNotFoundError:
        raise StageError(f"{path}: file not found (run the stage from the project root)") from None
    except yaml.YAMLError as error:
        raise StageError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if params is None:
        raise StageError(f"{path}: the file is empty; expected a mapping with keys {', '.join(SCHEMA)}")
    typed = validate_params(params)
    check_combinations(typed)
    return typed


def check_combinations(params: Params) -> None:
    """Values that are each fine alone but do not go together."""
    model, train = params.model, params.train
    # Both change the targets, which the sparse loss takes as class numbers.
    for key, value in (
        ("model.label_smoothing", model.label_smoothing),
        ("train.augment.mixup", train.augment.mixup),
    ):
        if value > 0 and model.loss != "categorical_crossentropy":
            raise StageError(
                f"{PARAMS_FILE}: {key} = {value!r} needs model.loss: categorical_crossentropy "
                f"(got {model.loss}); set {key.rsplit('.', 1)[1]} to 0 or change the loss"
            )
    inputs = params.preprocess.image_size**2 * 3
    if model.whitening > inputs:
        raise StageError(
            f"{PARAMS_FILE}: model.whitening = {model.whitening} is more components than an image has values "
            f"({inputs} at preprocess.image_size = {params.preprocess.image_size}); set it from 1 to {inputs}, or 0"
        )
    if model.shift_average >= params.preprocess.image_size:
        raise StageError(
            f"{PARAMS_FILE}: model.shift_average = {model.shift_average} pixels would shift the whole image out "
            f"of view at preprocess.image_size = {params.preprocess.image_size}; set it from 0 (off) to "
            f"{params.preprocess.image_size - 1}"
        )
    if train.warmup_epochs > 0 and train.lr_schedule != "cosine":
        raise StageError(
            f"{PARAMS_FILE}: train.warmup_epochs = {train.warmup_epochs} needs train.lr_schedule: cosine "
            f"(got {train.lr_schedule}); set warmup_epochs to 0 or the schedule to cosine"
        )
    if train.warmup_epochs >= train.epochs:
        raise StageError(
            f"{PARAMS_FILE}: train.warmup_epochs = {train.warmup_epochs} must be less than "
            f"train.epochs = {train.epochs}"
        )
    for option in ("early_stopping_from", "early_stopping_min_delta", "early_stopping_smoothing"):
        value = getattr(train, option)
        if value > 0 and train.early_stopping is None:
            raise StageError(
                f"{PARAMS_FILE}: train.{option} = {value!r} needs train.early_stopping: N (got null); "
                f"set {option} to 0, or early_stopping to a patience"
            )
