"""params.yaml: one schema for every key, checked before any stage does real work."""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Callable, Iterator

import yaml

from classifier.errors import StageError

PARAMS_FILE = "params.yaml"


class Rule:
    """Accepts a value when `check` returns True; `accepted` tells the user what would pass.

    `names` lists the accepted words (if any), so a near miss such as 'Adam' gets a did-you-mean.
    """

    def __init__(self, accepted: str, check: Callable[[Any], bool], names: tuple[Any, ...] = ()):
        self.accepted = accepted
        self.check = check
        self.names = names


def integer(minimum: int | None = None, maximum: int | None = None) -> Rule:
    bounds = _bounds_text(minimum, maximum)
    return Rule(
        f"an integer{bounds}",
        lambda v: isinstance(v, int)
        and not isinstance(v, bool)
        and (minimum is None or v >= minimum)
        and (maximum is None or v <= maximum),
    )


def number(minimum: float, maximum: float, *, exclusive: bool = False) -> Rule:
    def check(v: Any) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return False
        return minimum < v < maximum if exclusive else minimum <= v <= maximum

    sign = ("> ", " and < ") if exclusive else (">= ", " and <= ")
    return Rule(f"a number {sign[0]}{minimum}{sign[1]}{maximum}", check)


def choice(*names: Any) -> Rule:
    accepted = f"'{names[0]}'" if len(names) == 1 else "one of " + ", ".join(map(str, names))
    return Rule(accepted, lambda v: v in names, names)


def text(accepted: str = "a string", check: Callable[[str], bool] = lambda v: True) -> Rule:
    return Rule(accepted, lambda v: isinstance(v, str) and bool(v) and check(v))


def either(*rules: Rule) -> Rule:
    return Rule(
        " or ".join(r.accepted for r in rules),
        lambda v: any(r.check(v) for r in rules),
        tuple(name for r in rules for name in r.names),
    )


def list_of(item: Rule, min_length: int = 1) -> Rule:
    size = "a list (possibly empty)" if min_length == 0 else f"a list of at least {min_length} items"
    return Rule(
        f"{size}, each {item.accepted}",
        lambda v: isinstance(v, list) and len(v) >= min_length and all(item.check(i) for i in v),
    )


NULL = Rule("null", lambda v: v is None)
BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))


def _bounds_text(minimum: Any, maximum: Any) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def _is_checksum(value: str) -> bool:
    algorithm, _, digest = value.partition(":")
    lengths = {"md5": 32, "sha256": 64}
    return (
        algorithm in lengths
        and len(digest) == lengths[algorithm]
        and all(c in "0123456789abcdef" for c in digest.lower())
    )


ACTIVATIONS = (
    "relu", "sigmoid", "tanh", "elu", "selu", "gelu", "silu", "swish", "softplus", "softsign",
    "leaky_relu", "relu6", "mish", "hard_sigmoid", "hard_silu", "exponential", "linear",
)  # fmt: skip
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "lion")
LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")

SCHEMA: dict[str, Any] = {
    "seed": integer(0, 2**31 - 1),
    "download": {
        "url": text("a URL (http, https, file) or a local path"),
        "checksum": either(NULL, text("'md5:<32 hex digits>' or 'sha256:<64 hex digits>'", _is_checksum)),
        "connect_timeout": number(0.0, 3600.0, exclusive=True),
        "read_timeout": number(0.0, 3600.0, exclusive=True),
        "retries": integer(0, 100),
        "retry_delay": number(0.0, 3600.0),
    },
    "preprocess": {
        "image_size": integer(8, 1024),
        "fit": choice("crop", "pad", "stretch"),
        "validation": either(number(0.0, 1.0, exclusive=True), choice("test")),
        "test_from_train": either(NULL, number(0.0, 1.0, exclusive=True)),
        "cifar100_label": choice("fine", "coarse"),
        "on_bad_image": choice("error", "skip"),
        "limits": {
            "max_members": integer(1, 10**9),
            "max_uncompressed_mb": number(0.0, 1e9, exclusive=True),
            "max_image_megapixels": number(0.0, 1000.0, exclusive=True),
        },
    },
    "model": {
        "hidden_units": list_of(integer(1, 65536), min_length=0),
        "activation": choice(*ACTIVATIONS),
        "normalization": choice("none", "batch", "layer"),
        "dropout": number(0.0, 0.95),
        "residual": BOOLEAN,
        "optimizer": choice(*OPTIMIZERS),
        "learning_rate": number(0.0, 10.0, exclusive=True),
        "weight_decay": number(0.0, 1.0),
        "label_smoothing": number(0.0, 0.5),
        "loss": choice(*LOSSES),
    },
    "train": {
        "batch_size": integer(1, 65536),
        "epochs": integer(1, 100000),
        "threads": integer(1, 1024),
        "steps_per_execution": integer(1, 1_000_000),
        "jit_compile": BOOLEAN,
        "distribution": choice("single", "mirrored", "multi_worker"),
        "lr_schedule": choice("constant", "cosine"),
        "warmup_epochs": integer(0, 100000),
        "early_stopping": either(NULL, integer(1, 100000)),
        "augment": {
            "flip": BOOLEAN,
            "crop_padding": integer(0, 64),
        },
    },
    "evaluate": {
        "top_k": integer(1, 1000),
    },
    "plot": {
        "dpi": integer(20, 600),
        "width": number(1.0, 40.0),
        "height": number(1.0, 40.0),
        "misclassified": integer(1, 400),
    },
}


def validate_params(params: Any, schema: dict[str, Any] = SCHEMA, where: str = "") -> None:
    """Raise StageError naming the key path, the bad value and what is accepted."""
    if not isinstance(params, dict):
        place = f"'{where[:-1]}'" if where else "the file"
        raise StageError(
            f"{PARAMS_FILE}: {place} must be a mapping with keys {', '.join(schema)}; got {params!r}"
        )
    for key in params:
        if key not in schema:
            raise StageError(
                f"{PARAMS_FILE}: unknown key '{where}{key}'{_did_you_mean_key(str(key), schema, where)} "
                f"(accepted keys here: {', '.join(schema)})"
            )
    for key, rule in schema.items():
        path = f"{where}{key}"
        if key not in params:
            expected = f"a mapping with keys {', '.join(rule)}" if isinstance(rule, dict) else rule.accepted
            raise StageError(f"{PARAMS_FILE}: missing key '{path}' (expected {expected})")
        value = params[key]
        if isinstance(rule, dict):
            validate_params(value, rule, f"{path}.")
        elif not rule.check(value):
            raise StageError(
                f"{PARAMS_FILE}: {path} = {value!r} is not accepted; expected {rule.accepted}"
                + _did_you_mean_name(value, rule.names)
            )


def _key_paths(schema: dict[str, Any], where: str = "") -> Iterator[str]:
    for key, rule in schema.items():
        yield f"{where}{key}"
        if isinstance(rule, dict):
            yield from _key_paths(rule, f"{where}{key}.")


def _did_you_mean_key(key: str, schema: dict[str, Any], where: str) -> str:
    """The key's home in another section ('learning_rate' -> 'model.learning_rate'), else a look-alike
    sibling ('epoch' -> 'train.epochs'), else a look-alike anywhere."""
    homes = {path.rpartition(".")[2]: path for path in reversed(list(_key_paths(SCHEMA)))}
    if key in homes:
        return f"; did you mean '{homes[key]}'?"
    close = difflib.get_close_matches(key, list(schema), n=1)
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


def load_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """Read and validate the whole params file, so a typo anywhere fails every stage at once.

    Stages call this first, before importing TensorFlow or reading data: a bad value fails in
    about a second instead of after minutes of work.
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
    validate_params(params)
    check_combinations(params)
    return params


def check_combinations(params: dict[str, Any]) -> None:
    """Values that are each fine alone but do not go together."""
    model, train = params["model"], params["train"]
    if model["label_smoothing"] > 0 and model["loss"] != "categorical_crossentropy":
        raise StageError(
            f"{PARAMS_FILE}: model.label_smoothing = {model['label_smoothing']!r} needs model.loss: "
            f"categorical_crossentropy (got {model['loss']}); set label_smoothing to 0 or change the loss"
        )
    if train["warmup_epochs"] > 0 and train["lr_schedule"] != "cosine":
        raise StageError(
            f"{PARAMS_FILE}: train.warmup_epochs = {train['warmup_epochs']} needs train.lr_schedule: cosine "
            f"(got {train['lr_schedule']}); set warmup_epochs to 0 or the schedule to cosine"
        )
    if train["warmup_epochs"] >= train["epochs"]:
        raise StageError(
            f"{PARAMS_FILE}: train.warmup_epochs = {train['warmup_epochs']} must be less than "
            f"train.epochs = {train['epochs']}"
        )
