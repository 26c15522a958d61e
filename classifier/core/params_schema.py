"""Every key of params.yaml: its type, bounds or accepted words, and what it does (pydantic models).

classifier/core/params.py checks a params file against these models, with one-line messages. The same models
are published for editors as params.schema.json; regenerate it after changing them:
`python -m classifier.core.params_schema > params.schema.json` (a test fails if you forget).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, WrapValidator


@dataclass(frozen=True)
class Says:
    """What a field accepts, in words; `names` are the accepted words, so 'Adam' gets a did-you-mean."""

    accepted: str
    names: tuple[Any, ...] = ()


def _says(metadata: Any) -> Says:
    return next(m for m in metadata if isinstance(m, Says))


def integer(minimum: int, maximum: int) -> Any:
    return Annotated[int, Field(ge=minimum, le=maximum), Says(f"an integer from {minimum} to {maximum}")]


def _as_written(value: Any, check: Any) -> Any:
    """A number checked as a float but kept as the file wrote it: `0` stays the int 0, not 0.0, so the
    train stage's run key and the saved model's config hold the same bytes as the file's values."""
    checked = check(value)
    return value if type(value) is int else checked


AS_WRITTEN = WrapValidator(_as_written)


def number(minimum: float, maximum: float, *, exclusive: bool = False) -> Any:
    if exclusive:
        says = Says(f"a number > {minimum} and < {maximum}")
        return Annotated[float, Field(gt=minimum, lt=maximum), AS_WRITTEN, says]
    return Annotated[
        float, Field(ge=minimum, le=maximum), AS_WRITTEN, Says(f"a number >= {minimum} and <= {maximum}")
    ]


def below_one() -> Any:
    """A fraction that may be 0 but not 1."""
    return Annotated[float, Field(ge=0.0, lt=1.0), AS_WRITTEN, Says("a number >= 0.0 and < 1.0")]


def choice(*names: str) -> Any:
    accepted = f"'{names[0]}'" if len(names) == 1 else "one of " + ", ".join(names)
    return Annotated[Literal[names], Says(accepted, names)]


def either(*kinds: Any) -> Any:
    says = [_says(kind.__metadata__) for kind in kinds]
    joined = Says(" or ".join(s.accepted for s in says), tuple(n for s in says for n in s.names))
    return Annotated[Union[kinds], joined]  # noqa: UP007 (a tuple of types)


def list_of(item: Any) -> Any:
    return Annotated[list[item], Says(f"a list (possibly empty), each {_says(item.__metadata__).accepted}")]


NULL = Annotated[None, Says("null")]
BOOLEAN = Annotated[bool, Says("true or false")]
PLACE = Annotated[str, Field(min_length=1), Says("a URL (http, https, file) or a local path")]
HEX = r"^(md5:[0-9a-fA-F]{32}|sha256:[0-9a-fA-F]{64})$"
CHECKSUM = Annotated[str, Field(pattern=HEX), Says("'md5:<32 hex digits>' or 'sha256:<64 hex digits>'")]
FRACTION = number(0.0, 1.0, exclusive=True)
SECONDS = number(0.0, 3600.0, exclusive=True)
EPOCHS = integer(1, 100000)
ACTIVATIONS = (
    "relu", "sigmoid", "tanh", "elu", "selu", "gelu", "silu", "swish", "softplus", "softsign",
    "leaky_relu", "relu6", "mish", "hard_sigmoid", "hard_silu", "exponential", "linear",
)  # fmt: skip
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "lion")
LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")


def about(text: str) -> Any:
    """A required key, described (for editors) in params.schema.json."""
    return Field(description=text)


class Section(BaseModel):
    """Strict: no '1' -> 1, bool is not an int (an int is a float); no unknown key, no missing key."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class DownloadParams(Section):
    """Where the dataset archive comes from, and how it is fetched."""

    url: PLACE = about("https://..., file://..., or a local archive or folder")
    checksum: either(NULL, CHECKSUM) = about("md5:... or sha256:... of the archive; null = no check")
    connect_timeout: SECONDS = about("seconds to wait for the server to accept and answer")
    read_timeout: SECONDS = about("seconds to wait for the next bytes of the body before retrying")
    retries: integer(0, 100) = about("retries after a timeout, dropped connection or HTTP 5xx")
    retry_delay: number(0.0, 3600.0) = about("seconds before the first retry; doubled after each")


class LimitsParams(Section):
    """Refuse archives beyond these (archive bombs, decompression bombs)."""

    max_members: integer(1, 10**9) = about("most files an archive may hold")
    max_uncompressed_mb: number(0.0, 1e9, exclusive=True) = about("most MB an archive may unpack to")
    max_image_megapixels: number(0.0, 1000.0, exclusive=True) = about("largest image, in megapixels")


class PreprocessParams(Section):
    """How the images become the train, validation and test splits."""

    image_size: integer(8, 1024) = about("images are fitted to image_size x image_size RGB")
    fit: choice("crop", "pad", "stretch") = about("non-square images: centre crop, black bars, or stretch")
    validation: either(FRACTION, choice("test")) = about(
        'fraction of train held out for validation; "test" = validate on the test set (leaks)'
    )
    test_from_train: either(NULL, FRACTION) = about("no test/ folder: fraction of each class moved to test")
    cifar100_label: choice("fine", "coarse") = about("CIFAR-100 archives: fine (100 classes), coarse (20)")
    on_bad_image: choice("error", "skip") = about("unreadable image: error, or skip (counted in the metrics)")
    limits: LimitsParams = about(LimitsParams.__doc__)


class ModelParams(Section):
    """The network and how it is compiled."""

    whitening: integer(0, 65536) = about(
        "PCA-whiten the flattened image onto its first N principal components, fitted on the training "
        "split and stored as a fixed layer of the model (0 = off)"
    )
    whitening_epsilon: number(0.0, 1.0, exclusive=True) = about(
        "added to each component's variance before scaling it to 1: keeps faint, noisy directions small"
    )
    hidden_units: list_of(integer(1, 65536)) = about("one Dense layer per entry, of this many units")
    activation: choice(*ACTIVATIONS) = about("the activation of every hidden layer")
    normalization: choice("none", "batch", "layer") = about("normalise hidden layers before activation")
    dropout: number(0.0, 0.95) = about("fraction of each hidden layer's outputs dropped in training")
    residual: BOOLEAN = about("hidden layers as wide as their input add it: x + layer(x)")
    bottleneck_blocks: integer(0, 64) = about(
        "inverted-bottleneck blocks after the hidden layers, x + W2 act(W1 norm(x)), as wide as their "
        "input (0 = none)"
    )
    bottleneck_expansion: integer(1, 64) = about("how many times W1 widens each bottleneck block's input")
    optimizer: choice(*OPTIMIZERS) = about("the Keras optimizer")
    learning_rate: number(0.0, 10.0, exclusive=True) = about("the peak rate if lr_schedule is cosine")
    weight_decay: number(0.0, 1.0) = about("decoupled weight decay, as in AdamW: 0 = off")
    label_smoothing: number(0.0, 0.5) = about("targets (1-s) * one-hot + s/classes (categorical loss only)")
    loss: choice(*LOSSES) = about("the Keras loss")
    flip_average: BOOLEAN = about(
        "test-time augmentation: predict the mean of the image's and its mirror image's probabilities, "
        "in evaluate, predict and every exported format (training is unchanged)"
    )
    shift_average: integer(0, 64) = about(
        "test-time augmentation: also average over the image shifted this many pixels (black fill) up, "
        "down, left, right and diagonally: 9 views, 18 with flip_average (0 = off; training is unchanged)"
    )


class AugmentParams(Section):
    """Training images only (never validation or test), seeded per (seed, epoch, batch)."""

    flip: BOOLEAN = about("mirror left-right with probability 1/2")
    crop_padding: integer(0, 64) = about("pad with this many black pixels, crop back at random (0 = off)")
    mixup: number(0.0, 100.0) = about(
        "MixUp: blend each image and its one-hot target with another of the batch, weights lam, 1 - lam, "
        "lam ~ Beta(mixup, mixup) (0 = off; categorical_crossentropy only)"
    )


class TrainParams(Section):
    """How the model is fitted."""

    batch_size: integer(1, 65536) = about("images per training step")
    epochs: EPOCHS = about("passes over the training split")
    threads: integer(1, 1024) = about("TensorFlow intra/inter-op threads; results depend on it")
    steps_per_execution: integer(1, 1_000_000) = about("batches per call into TensorFlow: speed only")
    jit_compile: BOOLEAN = about(
        "XLA-compile each training step: ~1.7x less CPU time per epoch; rounds differently from false "
        "(still identical run to run); CPU only: ignored on a GPU or under tf.distribute"
    )
    distribution: choice("single", "mirrored", "multi_worker") = about(
        "single process | mirrored: all local GPUs/CPUs | multi_worker: machines in TF_CONFIG"
    )
    lr_schedule: choice("constant", "cosine") = about("cosine: decay model.learning_rate to 0 over the run")
    warmup_epochs: integer(0, 100000) = about("cosine only: ramp the rate up from 0 over this many epochs")
    early_stopping: either(NULL, EPOCHS) = about(
        "null = off; N = stop after N epochs without a better val_accuracy, and keep the weights of "
        "the best epoch (model selection on validation)"
    )
    early_stopping_from: below_one() = about(
        "fraction of train.epochs before which early stopping neither stops the run nor counts epochs "
        "toward its patience (0 = from the start; with cosine, e.g. 0.8 = once the rate has decayed)"
    )
    early_stopping_min_delta: number(0.0, 1.0) = about(
        "an epoch counts as better only if it beats the best val_accuracy (or its average) by more than this"
    )
    early_stopping_smoothing: below_one() = about(
        "0 = off; s: patience counts epochs without a better moving average of val_accuracy, "
        "ema = s * ema + (1 - s) * val_accuracy"
    )
    keep_best: BOOLEAN = about(
        "keep the best epoch's weights (by val_accuracy) without early stopping; early_stopping always does"
    )
    augment: AugmentParams = about(AugmentParams.__doc__)


class EvaluateParams(Section):
    """Metrics on the test split."""

    top_k: integer(1, 1000) = about("also report top-k accuracy: the true class is among the k best")


class PlotParams(Section):
    """Every PNG chart of the plot stage."""

    dpi: integer(20, 600) = about("dots per inch")
    width: number(1.0, 40.0) = about("inches")
    height: number(1.0, 40.0) = about("inches")
    misclassified: integer(1, 400) = about("misclassified.png: the N most confidently misclassified images")


class ExportParams(Section):
    """The export stage: the trained model as SavedModel, LiteRT (float32, int8) and ONNX (docs/export.md)."""

    calibration_images: integer(1, 1_000_000) = about(
        "training images (a sample drawn with seed) that calibrate the int8 model's value ranges"
    )


class Params(Section):
    """Every knob of the pipeline. Defaults reproduce the classic Keras MLP recipe on CIFAR-10."""

    model_config = ConfigDict(title="params.yaml")

    seed: integer(0, 2**31 - 1) = about("drives the validation split, initialisation and shuffling")
    download: DownloadParams = about(DownloadParams.__doc__)
    preprocess: PreprocessParams = about(PreprocessParams.__doc__)
    model: ModelParams = about(ModelParams.__doc__)
    train: TrainParams = about(TrainParams.__doc__)
    evaluate: EvaluateParams = about(EvaluateParams.__doc__)
    plot: PlotParams = about(PlotParams.__doc__)
    export: ExportParams = about(ExportParams.__doc__)


def json_schema_text() -> str:
    """params.schema.json: params.yaml's JSON Schema (draft 2020-12, as pydantic writes it)."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Params.model_json_schema()}
    return json.dumps(schema, indent=2) + "\n"


if __name__ == "__main__":
    if sys.argv[1:]:
        sys.exit("usage: python -m classifier.core.params_schema > params.schema.json")
    sys.stdout.write(json_schema_text())
