"""The image-folder layout: [<root>/]train/<class>/<image> and test/<class>/<image>."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classifier.core.errors import StageError
from classifier.data.dataset import Dataset, Options, carve_test
from classifier.data.images import is_image_name

SPLITS = ("train", "test")


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


def build_image_dataset(
    path: Path, folder: ImageFolder, names: list[str], images: np.ndarray, options: Options
) -> Dataset:
    """The dataset of an image folder, from the images `scan` decoded (`names[i]` is `images[i]`)."""
    root = "/".join(folder.root + [""]) if folder.root else ""
    classes = sorted(folder.files["train"])
    if not classes:
        raise StageError(f"{path}: no {root}train/<class>/ folders; the image-folder layout needs them")
    unknown = sorted(set(folder.files["test"]) - set(classes))
    if unknown:
        raise StageError(f"{path}: {root}test/{unknown[0]}/ has no matching train/{unknown[0]}/ folder")
    decoded = set(names)
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

    row = {name: i for i, name in enumerate(names)}

    def gather(split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images in class order, then name order: the same dataset always gives the same arrays."""
        by_class = [split_names[split].get(cls, []) for cls in classes]
        indices = np.fromiter((row[name] for names in by_class for name in names), dtype=np.int64)
        labels = np.repeat(np.arange(len(classes), dtype=np.int32), [len(names) for names in by_class])
        return images[indices], labels

    train_images, train_labels = gather("train")
    test_images, test_labels = gather("test")
    return Dataset(classes, train_images, train_labels, test_images, test_labels)
