"""Stage 2: read the raw archive in place and write uint8 train / validation / test splits.

Two layouts are understood:
- the official CIFAR-10 binary version: cifar-10-batches-bin/data_batch_1..5.bin, test_batch.bin and
  batches.meta.txt; records of 1 label byte + 3072 pixel bytes (R, then G, then B planes, 32x32);
- an image folder: <root>/train/<class>/<image>, <root>/test/<class>/<image>, class names taken
  from the folder names.
Either may be a .tar, .tar.gz, .zip or a directory. Nothing is ever unpacked onto disk.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common import StageError, load_params, run, save_split, write_json
from stages.images import decode_images, is_image_name

BINARY_SIDE = 32
BINARY_RECORD = 1 + 3 * BINARY_SIDE * BINARY_SIDE


@dataclass
class Dataset:
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def read_members(path: Path) -> dict[str, bytes]:
    """Return {member name: content} for every regular file of an archive or directory."""
    if path.is_dir():
        return {
            file.relative_to(path).as_posix(): file.read_bytes()
            for file in sorted(path.rglob("*"))
            if file.is_file()
        }
    if not path.is_file():
        raise StageError(f"{path}: no such file or directory")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    try:
        return _read_tar(path)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise StageError(f"{path}: not a readable .tar, .tar.gz or .zip archive ({error})") from None


def _checked_name(archive: Path, name: str) -> str:
    normal = posixpath.normpath(name)
    if name.startswith("/") or normal == ".." or normal.startswith("../"):
        raise StageError(f"{archive}: member '{name}' points outside the archive")
    return normal


def _read_tar(path: Path) -> dict[str, bytes]:
    members = {}
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            name = _checked_name(path, member.name)
            if member.isdir():
                continue
            if not member.isfile():
                raise StageError(f"{path}: member '{member.name}' is a link or device, not a regular file")
            members[name] = archive.extractfile(member).read()
    return members


def _read_zip(path: Path) -> dict[str, bytes]:
    members = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = _checked_name(path, info.filename)
            if not info.is_dir():
                members[name] = archive.read(info)
    return members


def read_dataset(path: Path, image_size: int) -> Dataset:
    members = read_members(path)
    if not members:
        raise StageError(f"{path}: the archive is empty")
    if any(posixpath.basename(name) == "data_batch_1.bin" for name in members):
        return read_cifar_binary(path, members, image_size)
    return read_image_folder(path, members, image_size)


def read_cifar_binary(path: Path, members: dict[str, bytes], image_size: int) -> Dataset:
    by_name = {posixpath.basename(name): name for name in members}
    try:
        classes = [line.strip() for line in members[by_name["batches.meta.txt"]].decode().splitlines()]
    except KeyError:
        raise StageError(f"{path}: binary layout without batches.meta.txt (the class names)") from None
    classes = [name for name in classes if name]
    train_files = sorted((n for n in by_name if n.startswith("data_batch_") and n.endswith(".bin")))
    if "test_batch.bin" not in by_name:
        raise StageError(f"{path}: binary layout without test_batch.bin")
    train = [_read_batch(by_name[n], members[by_name[n]], len(classes)) for n in train_files]
    test_images, test_labels = _read_batch(by_name["test_batch.bin"], members[by_name["test_batch.bin"]], len(classes))
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    if image_size != BINARY_SIDE:
        raise StageError(
            f"{path}: CIFAR binary images are {BINARY_SIDE}x{BINARY_SIDE}; "
            f"preprocess.image_size = {image_size} needs an image-folder dataset"
        )
    return Dataset(classes, train_images, train_labels, test_images, test_labels)


def _read_batch(name: str, data: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not data or len(data) % BINARY_RECORD:
        raise StageError(
            f"{name}: {len(data)} bytes is not a whole number of {BINARY_RECORD}-byte records"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, BINARY_RECORD)
    labels = records[:, 0].astype(np.int32)
    if labels.max() >= num_classes:
        raise StageError(f"{name}: label {labels.max()} is out of range for {num_classes} classes")
    # Stored as R, G, B planes of 32x32; Keras wants height x width x channel.
    images = records[:, 1:].reshape(-1, 3, BINARY_SIDE, BINARY_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_image_folder(path: Path, members: dict[str, bytes], image_size: int) -> Dataset:
    """Find <root>/{train,test}/<class>/<image> members; class names come from the folders."""
    splits: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for name in sorted(members):
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] in splits and is_image_name(parts[-1]):
            splits[parts[-3]].setdefault(parts[-2], []).append(name)
    for split in ("train", "test"):
        if not splits[split]:
            raise StageError(
                f"{path}: no {split}/<class>/<image> files found; expected the CIFAR binary layout "
                "or an image folder with train/ and test/"
            )
    classes = sorted(splits["train"])
    unknown = sorted(set(splits["test"]) - set(classes))
    if unknown:
        raise StageError(f"{path}: test classes {unknown} have no train folder")

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        names = [(name, label) for label, cls in enumerate(classes) for name in splits[split].get(cls, [])]
        images = decode_images([(n, members[n]) for n, _ in names], image_size, description=split)
        return images, np.array([label for _, label in names], dtype=np.int32)

    train_images, train_labels = load("train")
    test_images, test_labels = load("test")
    return Dataset(classes, train_images, train_labels, test_images, test_labels)


def split_validation(
    images: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Shuffle (seeded) then hold out `fraction` of the training set for validation."""
    order = np.random.default_rng(seed).permutation(len(labels))
    n_validation = max(1, round(len(labels) * fraction))
    if n_validation >= len(labels):
        raise StageError(
            f"preprocess.validation = {fraction} leaves no training images out of {len(labels)}"
        )
    held_out, kept = order[:n_validation], order[n_validation:]
    return (images[kept], labels[kept]), (images[held_out], labels[held_out])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="archive or directory written by the download stage")
    parser.add_argument("out_dir", type=Path, help="where train/validation/test .npz files go")
    args = parser.parse_args()
    params = load_params()
    seed, settings = params["seed"], params["preprocess"]

    dataset = read_dataset(args.raw, settings["image_size"])
    if settings["validation"] == "test":  # the classic recipe's choice; it leaks the test set
        train = dataset.train_images, dataset.train_labels
        validation = dataset.test_images, dataset.test_labels
    else:
        train, validation = split_validation(
            dataset.train_images, dataset.train_labels, settings["validation"], seed
        )

    os.makedirs(args.out_dir, exist_ok=True)
    save_split(args.out_dir / "train.npz", *train)
    save_split(args.out_dir / "validation.npz", *validation)
    save_split(args.out_dir / "test.npz", dataset.test_images, dataset.test_labels)
    write_json(args.out_dir / "classes.json", dataset.classes)
    print(
        f"preprocess: {len(dataset.classes)} classes; train {len(train[1])}, "
        f"validation {len(validation[1])}, test {len(dataset.test_labels)} images"
    )


if __name__ == "__main__":
    run(main)
