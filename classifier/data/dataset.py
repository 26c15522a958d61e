"""A dataset as the stages hold it, the preprocess options, and how it is split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier.core.errors import StageError
from classifier.core.params_schema import PreprocessParams

SPLITS = ("train", "test")


@dataclass
class Options:
    """What preprocess.* in params.yaml says about reading the dataset (its defaults are params.yaml's)."""

    image_size: int
    fit: str
    on_bad_image: str
    cifar100_label: str
    test_from_train: float | None
    seed: int
    max_members: int
    max_uncompressed_bytes: int
    max_image_pixels: int
    decoding: str = "processes"  # not a param: results do not depend on it (benchmarks try the others)

    @classmethod
    def from_params(cls, preprocess: PreprocessParams, seed: int) -> Options:
        limits = preprocess.limits
        return cls(
            image_size=preprocess.image_size,
            fit=preprocess.fit,
            on_bad_image=preprocess.on_bad_image,
            cifar100_label=preprocess.cifar100_label,
            test_from_train=preprocess.test_from_train,
            seed=seed,
            max_members=limits.max_members,
            max_uncompressed_bytes=int(limits.max_uncompressed_mb * 10**6),
            max_image_pixels=int(limits.max_image_megapixels * 10**6),
        )


@dataclass
class Dataset:
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    skipped: list[str] = field(default_factory=list)  # one message per bad image skipped
    ignored: int = 0  # files that are not part of the layout (readme, hidden files, ...)


def carve_test(
    path: Path, train: dict[str, list[str]], fraction: float, seed: int
) -> dict[str, dict[str, list[str]]]:
    """Move a seeded random `fraction` of each class's images (at least one) from train to test."""
    rng = np.random.default_rng(seed)
    carved: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for cls in sorted(train):
        names = train[cls]
        n_test = max(1, round(len(names) * fraction))
        if n_test >= len(names):
            raise StageError(
                f"{path}: class '{cls}' has {len(names)} image(s); too few to move "
                f"{fraction} of them to test (preprocess.test_from_train)"
            )
        order = rng.permutation(len(names))
        carved["test"][cls] = sorted(names[i] for i in order[:n_test])
        carved["train"][cls] = sorted(names[i] for i in order[n_test:])
    return carved


def split_validation(
    images: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Shuffle (seeded) then hold out `fraction` of the training set for validation."""
    order = np.random.default_rng(seed).permutation(len(labels))
    n_validation = max(1, round(len(labels) * fraction))
    if n_validation >= len(labels):
        raise StageError(f"preprocess.validation = {fraction} leaves no training images out of {len(labels)}")
    held_out, kept = order[:n_validation], order[n_validation:]
    return (images[kept], labels[kept]), (images[held_out], labels[held_out])
