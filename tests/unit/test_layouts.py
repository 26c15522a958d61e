"""classifier/data/layouts.py and the layouts it finds (cifar_binary.py, image_folder.py, archives.py, dataset.py): every layout and container reads to the same dataset."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.core.errors import StageError
from classifier.core.params import load_params
from classifier.data.archives import iter_members
from classifier.data.dataset import Options
from classifier.data.decoder import ImageDecoder
from classifier.data.layouts import read_dataset

from conftest import (
    CLASSES,
    MINI_JPG,
    PROJECT,
    encode,
    folder_files,
    learnable_images,
    tar_of,
    zip_of,
)  # fmt: skip

DEFAULT_PARAMS = load_params(PROJECT / "params.yaml")


def options(**changes) -> Options:
    """The preprocess options params.yaml gives, with `changes`."""
    return replace(Options.from_params(DEFAULT_PARAMS.preprocess, DEFAULT_PARAMS.seed), **changes)


def test_skip_mode_drops_bad_files_and_reports_them():
    good = encode(Image.new("RGB", (8, 8)), "PNG")
    files = [("a.png", good), ("b.jpg", b"text"), ("c.png", good)]
    with ImageDecoder(8, skip_bad=True, workers=2) as decoder:
        for name, data in files:
            decoder.add(name, data)
        names, images, skipped = decoder.finish()
    assert names == ["a.png", "c.png"] and images.shape == (2, 8, 8, 3)
    assert len(skipped) == 1 and skipped[0].startswith("b.jpg: not a readable image")


def test_cifar10_binary_layout(binary_archive: Path):
    dataset = read_dataset(binary_archive, options())
    assert dataset.classes == CLASSES
    assert dataset.train_images.shape == (300, 32, 32, 3) and dataset.test_images.shape == (60, 32, 32, 3)
    # Same generator as the fixture: the first batch's records come back pixel for pixel.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=60)
    np.testing.assert_array_equal(dataset.train_labels[:60], labels)
    np.testing.assert_array_equal(dataset.train_images[:60], learnable_images(labels, seed=0))


def test_cifar10_binary_resized_to_another_image_size(binary_archive: Path):
    dataset = read_dataset(binary_archive, options(image_size=16))
    assert dataset.train_images.shape == (300, 16, 16, 3)


def make_cifar100(path: Path, train: int = 40, test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    coarse_names, fine_names = ["animal", "thing"], ["cat", "dog", "cup", "pen"]
    labels = {}
    files = {
        "cifar-100-binary/coarse_label_names.txt": ("\n".join(coarse_names) + "\n").encode(),
        "cifar-100-binary/fine_label_names.txt": ("\n".join(fine_names) + "\n").encode(),
    }
    for split, count in (("train", train), ("test", test)):
        fine = np.arange(count) % 4
        coarse = fine // 2
        images = learnable_images(fine, seed=2)
        planes = images.transpose(0, 3, 1, 2).reshape(count, -1)
        records = np.concatenate([coarse[:, None], fine[:, None], planes], axis=1).astype(np.uint8)
        files[f"cifar-100-binary/{split}.bin"] = records.tobytes()
        labels[split] = fine, coarse
    tar_of(path, files)
    return labels["train"]


@pytest.mark.parametrize("label", ["fine", "coarse"])
def test_cifar100_binary_layout_with_fine_or_coarse_labels(tmp_path: Path, label: str):
    fine, coarse = make_cifar100(tmp_path / "c100.tar.gz")
    dataset = read_dataset(tmp_path / "c100.tar.gz", options(cifar100_label=label))
    if label == "fine":
        assert dataset.classes == ["cat", "dog", "cup", "pen"]
        np.testing.assert_array_equal(dataset.train_labels, fine)
    else:
        assert dataset.classes == ["animal", "thing"]
        np.testing.assert_array_equal(dataset.train_labels, coarse)
    assert dataset.test_images.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(dataset.train_images, learnable_images(fine, seed=2))


def test_every_container_gives_the_same_dataset(tmp_path: Path):
    files = folder_files()
    for name, data in files.items():
        (tmp_path / "dir" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dir" / name).write_bytes(data)
    sources = [
        tar_of(tmp_path / "a.tar", files, "w"),
        tar_of(tmp_path / "a.tgz", dict(reversed(files.items()))),  # member order does not matter
        zip_of(tmp_path / "a.zip", files),
        tmp_path / "dir",
    ]
    datasets = [read_dataset(source, options()) for source in sources]
    for dataset in datasets:
        assert dataset.classes == CLASSES
        np.testing.assert_array_equal(dataset.train_labels, [0] * 4 + [1] * 4 + [2] * 4)
        np.testing.assert_array_equal(dataset.train_images, datasets[0].train_images)
        np.testing.assert_array_equal(dataset.test_images, datasets[0].test_images)
    assert datasets[0].test_images.shape == (6, 32, 32, 3)


def test_macos_metadata_and_other_files_are_ignored(tmp_path: Path):
    files = folder_files(root="")
    files = {name.lstrip("/"): data for name, data in files.items()}
    files.update({
        "__MACOSX/train/airplane/._0.png": b"resource fork",
        "train/airplane/._1.png": b"AppleDouble",
        "train/.DS_Store": b"junk",
        "README.txt": b"my photos",
        "train/bird/notes.txt": b"notes",
    })  # fmt: skip
    dataset = read_dataset(zip_of(tmp_path / "a.zip", files), options())
    assert len(dataset.train_labels) == 12 and dataset.ignored == 5


def test_test_split_carved_from_train(tmp_path: Path):
    files = {name: data for name, data in folder_files(train=10).items() if "/test/" not in name}
    archive = tar_of(tmp_path / "a.tgz", files)
    dataset = read_dataset(archive, options(test_from_train=0.2))
    assert np.bincount(dataset.test_labels).tolist() == [2, 2, 2]  # stratified: 20% of each class
    assert np.bincount(dataset.train_labels).tolist() == [8, 8, 8]
    again = read_dataset(archive, options(test_from_train=0.2))
    np.testing.assert_array_equal(again.test_images, dataset.test_images)  # seeded
    other_seed = read_dataset(archive, options(test_from_train=0.2, seed=7))
    assert not np.array_equal(other_seed.test_images, dataset.test_images)
    every = np.concatenate([dataset.train_images, dataset.test_images]).reshape(30, -1)
    assert len(np.unique(every, axis=0)) == 30  # disjoint: no image in both


def test_skipped_images_are_counted(tmp_path: Path):
    files = folder_files()
    files["photos/train/bird/broken.jpg"] = b"not a jpeg"
    archive = tar_of(tmp_path / "a.tgz", files)
    with pytest.raises(StageError, match=r"photos/train/bird/broken\.jpg: not a readable image"):
        read_dataset(archive, options())
    dataset = read_dataset(archive, options(on_bad_image="skip"))
    assert len(dataset.skipped) == 1 and len(dataset.train_labels) == 12


def test_iter_members_reads_through_the_archive_api(tmp_path: Path):
    archive = tar_of(tmp_path / "a.tar", {"x/y.txt": b"hello", "./z.txt": b"zz"}, "w")
    members = {m.name: m.read() for m in iter_members(archive, 10, 1000) if not m.is_dir}
    assert members == {"x/y.txt": b"hello", "z.txt": b"zz"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]  # nothing extracted


def test_real_mini_jpeg_archive():
    if not MINI_JPG.exists():
        pytest.skip(f"{MINI_JPG} not present")
    dataset = read_dataset(MINI_JPG, options())
    assert len(dataset.classes) == 10
    assert dataset.train_images.shape == (1000, 32, 32, 3) and dataset.test_images.shape == (200, 32, 32, 3)
    with tarfile.open(MINI_JPG) as archive:  # the first airplane, decoded by Pillow directly
        member = archive.extractfile("cifar10-jpg-mini/train/airplane/0000.jpg").read()
    np.testing.assert_array_equal(
        dataset.train_images[0], np.asarray(Image.open(io.BytesIO(member)).convert("RGB"))
    )
