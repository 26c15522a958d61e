"""Helpers shared by every stage: params, errors, atomic writes and file formats.

Nothing here imports TensorFlow at module level: stages that do not train must stay fast to start.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

PARAMS_FILE = "params.yaml"
# Every zip we write carries this date, so the same content always gives the same bytes.
FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class StageError(Exception):
    """A problem the user can fix (bad param, bad input file); shown as one line, no traceback."""


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(), turning StageError into a one-line message and exit code 1."""
    try:
        main()
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------------------------------------
# Params: one schema for the whole params.yaml, checked before any stage does real work.
# ---------------------------------------------------------------------------------------------


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
        "misclassified": integer(1, 400),
    },
    "plot": {
        "dpi": integer(20, 600),
        "width": number(1.0, 40.0),
        "height": number(1.0, 40.0),
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


# ---------------------------------------------------------------------------------------------
# Atomic writes: outputs appear whole or not at all.
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, content: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(content, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# Prepared data: one byte-reproducible .npz per split (uint8 images, int labels).
# ---------------------------------------------------------------------------------------------

# What Eigen, and so TensorFlow's CPU kernels, expect of a buffer they use in place.
ALIGNMENT = 64


def save_arrays(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays like np.savez, but with fixed zip dates so equal arrays give equal bytes."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_ZIP_DATE)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def save_split(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    save_arrays(path, images=images.astype(np.uint8, copy=False), labels=labels.astype(np.int32))


def load_split(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a split written by save_split, each array starting on a 64-byte boundary."""
    with zipfile.ZipFile(path) as archive:
        return read_aligned_array(archive, "images.npy"), read_aligned_array(archive, "labels.npy")


def read_aligned_array(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """Read one .npy member straight into a 64-byte-aligned array, 1 MB at a time.

    TensorFlow can use such a buffer in place (stages.train.load_images), so the images are held once,
    not once by numpy and again by TensorFlow; np.load's buffers are only 16-byte aligned.
    """
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
        if fortran_order or dtype.hasobject:
            raise StageError(f"{archive.filename}: {name} is not a C-ordered array of numbers; rebuild it")
        raw = np.empty(int(np.prod(shape)) * dtype.itemsize + ALIGNMENT, dtype=np.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        array = raw[start : start + raw.size - ALIGNMENT].view(dtype).reshape(shape)
        buffer = memoryview(array.reshape(-1).view(np.uint8))  # its bytes, in place
        for offset in range(0, len(buffer), 1 << 20):
            chunk = buffer[offset : offset + (1 << 20)]
            if member.readinto(chunk) != len(chunk):
                raise StageError(f"{archive.filename}: {name} is truncated; rebuild it with `dvc repro`")
    return array


# ---------------------------------------------------------------------------------------------
# Keras helpers (TensorFlow is imported only when one of these is called).
# ---------------------------------------------------------------------------------------------


def configure_tensorflow(seed: int | None = None, threads: int | None = None) -> None:
    """Pin what results depend on: every random seed, op determinism and (when given) thread counts.

    Call before TensorFlow runs any op. Thread counts change the order of floating-point sums, so
    they are params (part of an experiment's identity), never derived from the machine.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.experimental.enable_op_determinism()
    if seed is not None:
        keras.utils.set_random_seed(seed)


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Save a .keras model whose bytes depend only on its config and weights.

    Keras stamps each save with the date, the object ids of shared dtype policies and the zip
    member times; we rewrite those so DVC sees the same hash for the same model.
    """
    path = Path(path)
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = Path(scratch) / "raw.keras"
        model.save(raw)
        with zipfile.ZipFile(raw) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for name in sorted(source.namelist()):
                content = source.read(name)
                if name == "metadata.json":
                    metadata = json.loads(content)
                    metadata.pop("date_saved", None)
                    content = json.dumps(metadata, sort_keys=True).encode()
                elif name == "config.json":
                    content = json.dumps(_renumber_object_ids(json.loads(content))).encode()
                out.writestr(zipfile.ZipInfo(name, date_time=FIXED_ZIP_DATE), content)


def _renumber_object_ids(config: Any) -> Any:
    """Replace memory-address ids with 1, 2, ... in order of first appearance (sharing kept)."""
    ids: dict[int, int] = {}

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else visit(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [visit(v) for v in node]
        return node

    return visit(config)


def load_model(path: str | os.PathLike) -> Any:
    import keras

    if not Path(path).exists():
        raise StageError(f"{path}: model file not found")
    return keras.models.load_model(path)
