"""Stage 2: read the raw archive in place and write uint8 train / validation / test splits.

Layouts understood, each in a .tar, .tar.gz/.tgz, .zip or a directory:
- CIFAR-10 binary version: data_batch_1..N.bin, test_batch.bin, batches.meta.txt; records of
  1 label byte + 3072 pixel bytes (R, G, B planes of 32x32);
- CIFAR-100 binary version: train.bin, test.bin, coarse_label_names.txt, fine_label_names.txt;
  records of 1 coarse label byte + 1 fine label byte + 3072 pixel bytes;
- an image folder: [<root>/]train/<class>/<image> and test/<class>/<image> (images may sit in
  subfolders of a class folder); class names are the folder names.
Members are read through the archive API, never extracted to disk, and nothing is ever unpickled:
the pickled "python version" of CIFAR is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import stat
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from stages.common import StageError, load_params, run, save_split, write_json
from stages.images import BadImage, ImageDecoder, is_image_name, resize_images

BINARY_SIDE = 32
PIXELS = 3 * BINARY_SIDE * BINARY_SIDE
CIFAR10_BATCH = re.compile(r"data_batch_(\d+)\.bin")
CIFAR10_FILES = ("batches.meta.txt", "test_batch.bin")
CIFAR100_FILES = ("train.bin", "test.bin", "coarse_label_names.txt", "fine_label_names.txt")
BINARY_FILES = CIFAR10_FILES + CIFAR100_FILES
PICKLED_FOLDERS = ("cifar-10-batches-py", "cifar-100-python")
PICKLED_NAMES = re.compile(r"data_batch_\d+|test_batch|batches\.meta|meta|train|test")
BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
SPLITS = ("train", "test")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError)


@dataclass
class Options:
    """What preprocess.* in params.yaml says about reading the dataset."""

    image_size: int = 32
    fit: str = "crop"
    on_bad_image: str = "error"
    cifar100_label: str = "fine"
    test_from_train: float | None = None
    seed: int = 42
    max_members: int = 1_000_000
    max_uncompressed_bytes: int = 20_000 * 10**6
    max_image_pixels: int = 50_000_000
    decoding: str = "processes"  # not a param: results do not depend on it (benchmarks try the others)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Options":
        settings, limits = params["preprocess"], params["preprocess"]["limits"]
        return cls(
            image_size=settings["image_size"],
            fit=settings["fit"],
            on_bad_image=settings["on_bad_image"],
            cifar100_label=settings["cifar100_label"],
            test_from_train=settings["test_from_train"],
            seed=params["seed"],
            max_members=limits["max_members"],
            max_uncompressed_bytes=int(limits["max_uncompressed_mb"] * 10**6),
            max_image_pixels=int(limits["max_image_megapixels"] * 10**6),
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


# ---------------------------------------------------------------------------------------------
# Members: every file of an archive or directory, with its safety checked before it is read.
# ---------------------------------------------------------------------------------------------


@dataclass
class Member:
    name: str  # path inside the archive, '/'-separated, checked to stay inside it
    is_dir: bool
    read: Callable[[], bytes]


def iter_members(path: Path, max_members: int, max_bytes: int) -> Iterator[Member]:
    """Yield the files and folders of an archive or directory, refusing anything unsafe.

    Links, devices, names that escape the archive and duplicate names are errors; so are more
    members or more uncompressed bytes than the limits allow (checked before reading them).
    """
    if path.is_dir():
        source, total = _directory_entries(path, path), None
    elif not path.is_file():
        raise StageError(f"{path}: no such file or directory")
    elif _starts_with(path, ZIP_MAGIC):
        source, total = _zip_entries(path), path.stat().st_size
    else:
        source, total = _tar_entries(path), path.stat().st_size
    count, size_sum, seen = 0, 0, set()
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"read {path.name}") as bar:
        for raw_name, size, is_dir, read, position in source:
            count += 1
            if count > max_members:
                raise StageError(
                    f"{path}: more than {max_members:,} members (preprocess.limits.max_members)"
                )
            size_sum += size
            if size_sum > max_bytes:
                raise StageError(
                    f"{path}: more than {max_bytes:,} bytes once uncompressed, at member '{raw_name}' "
                    "(preprocess.limits.max_uncompressed_mb)"
                )
            name = _checked_name(path, raw_name)
            if name in seen:
                raise StageError(f"{path}: member '{name}' appears twice; which one is meant is ambiguous")
            seen.add(name)
            if position != bar.n:
                bar.update(position - bar.n)
            yield Member(name, is_dir, read)


def _checked_name(archive: Path, name: str) -> str:
    parts = name.replace("\\", "/").split("/")
    if parts[0] == "" or ".." in parts or re.match(r"[A-Za-z]:", name):  # absolute, C:..., or ../
        raise StageError(f"{archive}: member '{name}' points outside the archive (absolute or '..'); refused")
    if "" in parts or "." in parts:  # "./a", "a//b", "dir/"
        parts = [part for part in parts if part not in ("", ".")]
    return "/".join(parts)


def _starts_with(path: Path, prefixes: tuple[bytes, ...]) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in prefixes


def _tar_entries(path: Path) -> Iterator[tuple[str, int, bool, Callable[[], bytes], int]]:
    with open(path, "rb") as raw:
        try:
            archive = tarfile.open(fileobj=raw, mode="r:*")
        except ARCHIVE_ERRORS as error:
            raw.seek(0)
            if raw.read(2) == b"\x1f\x8b":
                problem = "gzip data, but not a readable tar (truncated or corrupt?)"
            else:
                problem = "not a .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip archive"
            raise StageError(f"{path}: {problem}") from None
        with archive:
            members, count, position = iter(archive), 0, 0
            while True:
                try:
                    info = next(members, None)
                except ARCHIVE_ERRORS as error:
                    raise StageError(f"{path}: archive is truncated or corrupt ({_reason(error)})") from None
                if info is None:
                    return
                if not (info.isreg() or info.isdir()):
                    kind = (
                        "a symbolic link" if info.issym()
                        else "a hard link" if info.islnk()
                        else "a device file" if info.isdev()
                        else "not a regular file"
                    )  # fmt: skip
                    raise StageError(
                        f"{path}: member '{info.name}' is {kind}; only regular files and folders are accepted"
                    )
                count += 1
                if count % 256 == 0:  # for the progress bar; now and then, as tell() is a system call
                    position = raw.tell()
                content = functools.partial(_tar_read, archive, info)
                read = functools.partial(_read_member, path, info.name, content)
                yield info.name, info.size, info.isdir(), read, position


def _tar_read(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    return archive.extractfile(info).read()


def _zip_entries(path: Path) -> Iterator[tuple[str, int, bool, Callable[[], bytes], int]]:
    try:
        archive = zipfile.ZipFile(path)
    except ARCHIVE_ERRORS as error:
        raise StageError(f"{path}: not a readable zip archive ({_reason(error)})") from None
    with archive:
        position = 0
        for info in archive.infolist():
            # Unix file type bits, when the zip was made on Unix and recorded them.
            kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
            if kind == stat.S_IFLNK:
                raise StageError(f"{path}: member '{info.filename}' is a symbolic link; refused")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise StageError(f"{path}: member '{info.filename}' is a device or special file; refused")
            if info.flag_bits & 0x1:
                raise StageError(f"{path}: member '{info.filename}' is encrypted; zip it without a password")
            position += info.compress_size
            read = functools.partial(_read_member, path, info.filename, functools.partial(archive.read, info))
            yield info.filename, info.file_size, info.is_dir(), read, position


def _directory_entries(root: Path, folder: Path) -> Iterator[tuple[str, int, bool, Callable[[], bytes], int]]:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        name = path.relative_to(root).as_posix()
        if entry.is_symlink():
            raise StageError(f"{path}: is a symbolic link; only regular files and folders are accepted")
        if entry.is_dir(follow_symlinks=False):
            yield name, 0, True, lambda: b"", 0
            yield from _directory_entries(root, path)
        elif entry.is_file(follow_symlinks=False):
            size = entry.stat(follow_symlinks=False).st_size
            yield name, size, False, path.read_bytes, 0
        else:
            raise StageError(f"{path}: is a device or special file; only regular files and folders are read")


def _read_member(archive: Path, name: str, read: Callable[[], bytes]) -> bytes:
    try:
        return read()
    except ARCHIVE_ERRORS as error:
        raise StageError(f"{archive}: member '{name}' is truncated or corrupt ({_reason(error)})") from None


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------------------------
# Reading a dataset: one pass over the members; images are decoded while the archive is read.
# ---------------------------------------------------------------------------------------------


class ImageFolder:
    """Where the images of an image-folder layout are: files[split][class] = member names."""

    def __init__(self, archive: Path):
        self.archive = archive
        self.root: list[str] | None = None
        self.files: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}

    def place(self, parts: list[str], is_dir: bool) -> tuple[str, str] | None:
        """Return (split, class) for a member under <root>/<split>/<class>/, else None."""
        where = next((i for i, part in enumerate(parts) if part in SPLITS), None)
        if where is None:
            return None
        if self.root is None:
            self.root = parts[:where]
        elif parts[:where] != self.root:
            raise StageError(
                f"{self.archive}: member '{'/'.join(parts)}' is in a second dataset root "
                f"(the first is '{'/'.join(self.root) or '.'}'); keep one train/ and test/"
            )
        split = parts[where]
        if len(parts) == where + 1 or (len(parts) == where + 2 and not is_dir):
            if not is_dir and is_image_name(parts[-1]):
                raise StageError(
                    f"{self.archive}: image '{'/'.join(parts)}' is not in a class folder "
                    f"(expected {split}/<class>/<image>)"
                )
            return None
        cls = parts[where + 1]
        self.files[split].setdefault(cls, [])
        return split, cls

    def add(self, split: str, cls: str, name: str) -> None:
        self.files[split][cls].append(name)

    def found(self) -> bool:
        return self.root is not None


@dataclass
class Scan:
    """What one pass over the members found."""

    folder: ImageFolder
    binary: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # file name -> (member, content)
    names: list[str] = field(default_factory=list)  # decoded images, in the order of `images`
    images: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)
    pickled: str | None = None  # a member of the pickled "python version", never read
    files: int = 0
    ignored: int = 0


def scan(path: Path, options: Options) -> Scan:
    """Read every member once: keep CIFAR binary files, decode images (in parallel) as they come."""
    found = Scan(ImageFolder(path))
    skip_bad = options.on_bad_image == "skip"
    decoder = ImageDecoder(
        options.image_size, options.fit, options.max_image_pixels, skip_bad, parallel=options.decoding
    )
    # closing(): on an error, close the archive and its progress bar before the message is printed.
    members = contextlib.closing(iter_members(path, options.max_members, options.max_uncompressed_bytes))
    with decoder, members as member_iterator:
        for member in member_iterator:
            parts, is_file = member.name.split("/"), not member.is_dir
            found.files += is_file
            if any(part.startswith(".") or part == "__MACOSX" for part in parts):
                found.ignored += is_file  # .DS_Store, ._photo.jpg (macOS metadata), .git, ...
            elif is_file and (parts[-1] in BINARY_FILES or CIFAR10_BATCH.fullmatch(parts[-1])):
                if parts[-1] in found.binary:
                    first = found.binary[parts[-1]][0]
                    raise StageError(f"{path}: '{first}' and '{member.name}': two copies of {parts[-1]}")
                found.binary[parts[-1]] = member.name, member.read()
            elif any(p in PICKLED_FOLDERS for p in parts) or (is_file and PICKLED_NAMES.fullmatch(parts[-1])):
                found.pickled = member.name
            elif (place := found.folder.place(parts, member.is_dir)) and is_file and is_image_name(parts[-1]):
                found.folder.add(*place, member.name)
                decoder.add(member.name, member.read())
            else:
                found.ignored += is_file
        found.names, found.images, found.skipped = decoder.finish()
    return found


def read_dataset(path: Path, options: Options) -> Dataset:
    """Read any supported layout from an archive or directory; raise StageError on any problem."""
    try:
        found = scan(path, options)
    except BadImage as error:  # name the archive too, not only the member
        raise StageError(f"{path}: {error}") from None
    binary = found.binary
    if binary and found.folder.found():
        raise StageError(f"{path}: has both CIFAR binary files and train/ or test/ folders; keep one layout")
    if any(CIFAR10_BATCH.fullmatch(name) or name in CIFAR10_FILES for name in binary):
        dataset = read_cifar10(path, binary)
    elif binary:
        dataset = read_cifar100(path, binary, options.cifar100_label)
    elif found.folder.found():
        dataset = build_image_dataset(path, found, options)
    elif found.pickled:
        raise StageError(
            f"{path}: '{found.pickled}' is from the pickled 'python version' of CIFAR, which is never read "
            f"because unpickling can run code; use the binary version instead ({BINARY_URL})"
        )
    elif found.files == 0:
        raise StageError(f"{path}: the archive is empty")
    else:
        raise StageError(
            f"{path}: no dataset found; expected the CIFAR-10/100 binary layout or an image folder "
            "with train/<class>/<image> (see README, 'Your own data')"
        )
    if binary and options.test_from_train is not None:
        raise StageError(f"{path}: CIFAR binary data has a test set; set preprocess.test_from_train: null")
    if binary and options.image_size != BINARY_SIDE:
        dataset.train_images = resize_images(dataset.train_images, options.image_size)
        dataset.test_images = resize_images(dataset.test_images, options.image_size)
    dataset.ignored = found.ignored
    return dataset


# ---------------------------------------------------------------------------------------------
# The CIFAR binary layouts.
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The image-folder layout.
# ---------------------------------------------------------------------------------------------


def build_image_dataset(path: Path, found: Scan, options: Options) -> Dataset:
    folder = found.folder
    root = "/".join(folder.root + [""]) if folder.root else ""
    classes = sorted(folder.files["train"])
    if not classes:
        raise StageError(f"{path}: no {root}train/<class>/ folders; the image-folder layout needs them")
    unknown = sorted(set(folder.files["test"]) - set(classes))
    if unknown:
        raise StageError(f"{path}: {root}test/{unknown[0]}/ has no matching train/{unknown[0]}/ folder")
    decoded = set(found.names)
    split_names: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for split, by_class in folder.files.items():
        for cls, members in by_class.items():
            kept = sorted(name for name in members if name in decoded)
            if not kept:
                why = f" (all {len(members)} skipped as unreadable)" if members else ""
                raise StageError(f"{path}: {root}{split}/{cls}/ has no images{why}")
            split_names[split][cls] = kept

    if not folder.files["test"]:
        if options.test_from_train is None:
            raise StageError(
                f"{path}: no {root}test/ folder; add one, or set preprocess.test_from_train "
                "(e.g. 0.2) to move that fraction of each class from train to test"
            )
        split_names = carve_test(path, split_names["train"], options.test_from_train, options.seed)
    elif options.test_from_train is not None:
        raise StageError(
            f"{path}: has a {root}test/ folder, so preprocess.test_from_train must be null "
            f"(it is {options.test_from_train})"
        )

    row = {name: i for i, name in enumerate(found.names)}

    def gather(split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images in class order, then name order: the same dataset always gives the same arrays."""
        by_class = [split_names[split].get(cls, []) for cls in classes]
        indices = np.fromiter((row[name] for names in by_class for name in names), dtype=np.int64)
        labels = np.repeat(np.arange(len(classes), dtype=np.int32), [len(names) for names in by_class])
        return found.images[indices], labels

    train_images, train_labels = gather("train")
    test_images, test_labels = gather("test")
    return Dataset(classes, train_images, train_labels, test_images, test_labels, found.skipped)


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
        raise StageError(
            f"preprocess.validation = {fraction} leaves no training images out of {len(labels)}"
        )
    held_out, kept = order[:n_validation], order[n_validation:]
    return (images[kept], labels[kept]), (images[held_out], labels[held_out])


def report_skipped(skipped: list[str], shown: int = 20) -> None:
    for message in skipped[:shown]:
        print(f"warning: skipped {message}", file=sys.stderr)
    if len(skipped) > shown:
        print(f"warning: ... and {len(skipped) - shown} more skipped images", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="archive or directory written by the download stage")
    parser.add_argument("out_dir", type=Path, help="where train/validation/test .npz and classes.json go")
    parser.add_argument("metrics", type=Path, help="where to write the image counts (JSON)")
    args = parser.parse_args()
    params = load_params()
    options = Options.from_params(params)
    validation_setting = params["preprocess"]["validation"]

    dataset = read_dataset(args.raw, options)
    if validation_setting == "test":  # the classic recipe's choice; it leaks the test set
        train = dataset.train_images, dataset.train_labels
        validation = dataset.test_images, dataset.test_labels
    else:
        train, validation = split_validation(
            dataset.train_images, dataset.train_labels, validation_setting, options.seed
        )

    report_skipped(dataset.skipped)
    save_split(args.out_dir / "train.npz", *train)
    save_split(args.out_dir / "validation.npz", *validation)
    save_split(args.out_dir / "test.npz", dataset.test_images, dataset.test_labels)
    write_json(args.out_dir / "classes.json", dataset.classes)
    counts = {
        "classes": len(dataset.classes),
        "train_images": len(train[1]),
        "validation_images": len(validation[1]),
        "test_images": len(dataset.test_labels),
        "skipped_bad_images": len(dataset.skipped),
        "ignored_files": dataset.ignored,
    }
    write_json(args.metrics, counts)
    print(
        f"preprocess: {len(dataset.classes)} classes; train {counts['train_images']}, validation "
        f"{counts['validation_images']}, test {counts['test_images']} images; "
        f"{len(dataset.skipped)} bad images skipped, {dataset.ignored} other files ignored"
    )


if __name__ == "__main__":
    run(main)
