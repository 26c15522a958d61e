"""Which layout an archive holds, read in one pass over its members."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier.core.errors import StageError
from classifier.data.archives import iter_members
from classifier.data.cifar_binary import (
    BINARY_FILES,
    BINARY_SIDE,
    CIFAR10_BATCH,
    CIFAR10_FILES,
    read_cifar10,
    read_cifar100,
)
from classifier.data.dataset import Dataset, Options
from classifier.data.decoder import ImageDecoder
from classifier.data.image_folder import ImageFolder, build_image_dataset
from classifier.data.images import BadImage, is_image_name, resize_images

PICKLED_FOLDERS = ("cifar-10-batches-py", "cifar-100-python")
PICKLED_NAMES = re.compile(r"data_batch_\d+|test_batch|batches\.meta|meta|train|test")
BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


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
        dataset = build_image_dataset(path, found.folder, found.names, found.images, options)
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
    dataset.skipped, dataset.ignored = found.skipped, found.ignored
    return dataset
