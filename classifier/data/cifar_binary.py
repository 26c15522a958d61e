"""The CIFAR-10 and CIFAR-100 binary layouts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from classifier.core.errors import StageError
from classifier.data.dataset import Dataset

BINARY_SIDE = 32
PIXELS = 3 * BINARY_SIDE * BINARY_SIDE
CIFAR10_BATCH = re.compile(r"data_batch_(\d+)\.bin")
CIFAR10_FILES = ("batches.meta.txt", "test_batch.bin")
CIFAR100_FILES = ("train.bin", "test.bin", "coarse_label_names.txt", "fine_label_names.txt")
BINARY_FILES = CIFAR10_FILES + CIFAR100_FILES


def read_cifar10(path: Path, files: dict[str, tuple[str, bytes]]) -> Dataset:
    for required in CIFAR10_FILES:
        if required not in files:
            raise StageError(f"{path}: CIFAR-10 binary layout without {required}")
    classes = _class_names(path, *files["batches.meta.txt"])
    numbers = sorted(int(CIFAR10_BATCH.fullmatch(name)[1]) for name in files if CIFAR10_BATCH.fullmatch(name))
    if numbers != list(range(1, len(numbers) + 1)):
        missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers)) or [1]
        raise StageError(f"{path}: CIFAR-10 binary layout without data_batch_{missing[0]}.bin")
    train = [_read_records(path, *files[f"data_batch_{n}.bin"], len(classes), 1, 0) for n in numbers]
    test_images, test_labels = _read_records(path, *files["test_batch.bin"], len(classes), 1, 0)
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    _check_every_class(path, classes, train_labels)
    return Dataset(classes, train_images, train_labels, test_images, test_labels)


def read_cifar100(path: Path, files: dict[str, tuple[str, bytes]], label: str) -> Dataset:
    for required in CIFAR100_FILES:
        if required not in files:
            raise StageError(f"{path}: CIFAR-100 binary layout without {required}")
    classes = _class_names(path, *files[f"{label}_label_names.txt"])
    label_byte = 0 if label == "coarse" else 1
    train_images, train_labels = _read_records(path, *files["train.bin"], len(classes), 2, label_byte)
    test_images, test_labels = _read_records(path, *files["test.bin"], len(classes), 2, label_byte)
    _check_every_class(path, classes, train_labels)
    return Dataset(classes, train_images, train_labels, test_images, test_labels)


def _class_names(path: Path, name: str, data: bytes) -> list[str]:
    try:
        classes = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise StageError(f"{path}: member '{name}' is not UTF-8 text (one class name per line)") from None
    if not classes or len(set(classes)) != len(classes):
        raise StageError(f"{path}: member '{name}' must list distinct class names, one per line")
    return classes


def _read_records(
    path: Path, name: str, data: bytes, num_classes: int, label_bytes: int, label_byte: int
) -> tuple[np.ndarray, np.ndarray]:
    """Parse records of `label_bytes` label bytes + R, G, B planes of 32x32."""
    record = label_bytes + PIXELS
    if not data or len(data) % record:
        raise StageError(
            f"{path}: member '{name}' is {len(data):,} bytes, not a whole number of {record}-byte records "
            "(truncated or not this layout)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = records[:, label_byte].astype(np.int32)
    if labels.max() >= num_classes:
        row = int(np.argmax(labels >= num_classes))
        raise StageError(
            f"{path}: member '{name}' record {row} has label {labels[row]}, "
            f"out of range for {num_classes} classes"
        )
    # Stored as R, G, B planes; Keras wants height x width x channel.
    images = records[:, label_bytes:].reshape(-1, 3, BINARY_SIDE, BINARY_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _check_every_class(path: Path, classes: list[str], labels: np.ndarray) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        more = f" (and {len(empty) - 1} more classes)" if len(empty) > 1 else ""
        raise StageError(f"{path}: no training images of class '{empty[0]}'{more}")
