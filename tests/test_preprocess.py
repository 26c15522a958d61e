"""The preprocess stage and image decoding: layouts, containers, image modes, fitting, splits, skips."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import (
    CLASSES, MINI_JPG, PROJECT, add_bytes, cifar_binary_bytes, learnable_images, make_cifar_binary_archive,
    make_image_folder, make_project, set_params, sh,
)  # fmt: skip
from classifier.errors import StageError
from classifier.splits import load_split
from classifier.images import ImageDecoder, decode_image, decode_images, fit_image
from classifier.archives import iter_members
from classifier.dataset import Options
from classifier.layouts import read_dataset

# ----------------------------------------------------------------------------- helpers


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def tar_of(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            add_bytes(archive, name, data)
    return path


def zip_of(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def folder_files(classes=CLASSES, train: int = 4, test: int = 2, root: str = "photos") -> dict[str, bytes]:
    """{member name: PNG bytes} of an image folder whose classes have distinct colours."""
    files = {}
    for label, cls in enumerate(classes):
        for split, count in (("train", train), ("test", test)):
            for i, image in enumerate(learnable_images(np.full(count, label), seed=label)):
                files[f"{root}/{split}/{cls}/{i}.png"] = encode(Image.fromarray(image), "PNG")
    return files


# ----------------------------------------------------------------------------- decode_image


def solid(mode: str, colour, size=(40, 30)) -> Image.Image:
    return Image.new(mode, size, colour)


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("grey.png", encode(solid("L", 100), "PNG"), (100, 100, 100)),
        ("grey.jpg", encode(solid("L", 100), "JPEG", quality=100), (100, 100, 100)),
        ("red.png", encode(solid("RGB", (255, 0, 0)), "PNG"), (255, 0, 0)),
        ("transparent.png", encode(solid("RGBA", (0, 0, 0, 0)), "PNG"), (255, 255, 255)),  # onto white
        ("half-alpha.png", encode(solid("RGBA", (0, 0, 0, 128)), "PNG"), (127, 127, 127)),
        ("bitmap.bmp", encode(solid("1", 1), "BMP"), (255, 255, 255)),
        ("cmyk.jpg", encode(solid("CMYK", (0, 255, 255, 0)), "JPEG", quality=100), (255, 0, 0)),
        ("red.webp", encode(solid("RGB", (255, 0, 0)), "WEBP", lossless=True), (255, 0, 0)),
        ("red.tif", encode(solid("RGB", (255, 0, 0)), "TIFF"), (255, 0, 0)),
        ("red.gif", encode(solid("RGB", (255, 0, 0)).convert("P"), "GIF"), (255, 0, 0)),
    ],
)
def test_any_mode_becomes_rgb(name: str, data: bytes, expected):
    array = decode_image(data, 16, name)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    assert np.abs(array.astype(int) - expected).max() <= 2


def test_palette_with_transparent_colour_goes_onto_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 255, 0])
    image.putpixel((0, 0), 1)
    array = decode_image(encode(image, "PNG", transparency=0), 8, "p.png")
    assert tuple(array[0, 0]) == (0, 255, 0)
    assert tuple(array[4, 4]) == (255, 255, 255)


def test_16_bit_png_is_scaled_not_clipped():
    pixels = np.full((8, 8), 4096 * 8, dtype=np.uint16)  # 32768 = half of the 16-bit range
    array = decode_image(encode(Image.fromarray(pixels), "PNG"), 8, "deep.png")
    assert set(np.unique(array)) == {128}  # Pillow's own conversion would clip to 255


def test_exif_rotated_photo_is_turned_upright():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # stored: blue left half, red right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    array = decode_image(encode(image, "JPEG", quality=95, exif=exif), 20, "phone.jpg", fit="stretch")
    top, bottom = array[2, 10], array[17, 10]
    assert top[2] > 200 and top[0] < 60  # upright: blue on top
    assert bottom[0] > 200 and bottom[2] < 60


def test_fit_modes_on_a_wide_photo():
    # 300x100: left third blue, middle green, right third red.
    image = Image.new("RGB", (300, 100), (0, 255, 0))
    image.paste((0, 0, 255), (0, 0, 100, 100))
    image.paste((255, 0, 0), (200, 0, 300, 100))
    crop = np.asarray(fit_image(image, 30, "crop")).astype(int)
    pad = np.asarray(fit_image(image, 30, "pad")).astype(int)
    stretch = np.asarray(fit_image(image, 30, "stretch")).astype(int)

    def near(pixel, colour) -> bool:  # bicubic blurs a pixel or two across colour edges
        return np.abs(pixel - colour).max() <= 10

    assert near(crop[15, 3], (0, 255, 0)) and near(crop[15, 26], (0, 255, 0))  # only the centre square
    assert near(pad[2, 15], (0, 0, 0)) and near(pad[27, 15], (0, 0, 0))  # black bars above and below
    assert near(pad[15, 3], (0, 0, 255)) and near(pad[15, 15], (0, 255, 0)) and near(pad[15, 26], (255, 0, 0))
    assert near(stretch[3, 3], (0, 0, 255)) and near(stretch[26, 26], (255, 0, 0))  # all of it, squashed


def test_large_jpeg_is_decoded_at_reduced_scale_like_a_full_decode():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((1600, 1200), Image.Resampling.NEAREST)
    array = decode_image(encode(big, "JPEG", quality=95), 32, "big.jpg")
    reference = np.asarray(fit_image(big, 32)).astype(int)
    assert np.abs(array.astype(int) - reference).mean() < 12


def test_bad_images_are_errors_that_name_the_file():
    with pytest.raises(StageError, match=r"^notes\.jpg: not a readable image \(not JPEG, PNG, BMP, GIF, WEBP, TIFF\)$"):
        decode_image(b"just some text", 32, "notes.jpg")
    jpeg = encode(Image.new("RGB", (32, 32), (1, 2, 3)), "JPEG")
    with pytest.raises(StageError, match=r"(?i)^cut\.jpg: not a readable image \(.*truncated"):
        decode_image(jpeg[: len(jpeg) // 2], 32, "cut.jpg")
    with pytest.raises(StageError, match=r"^big\.png: image is 200x100 = 20,000 pixels, over the limit of 10,000"):
        decode_image(encode(Image.new("RGB", (200, 100)), "PNG"), 32, "big.png", max_pixels=10_000)


def test_formats_that_run_programs_are_never_opened():
    """EPS would start Ghostscript; it is refused whatever the file is called."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(StageError, match=r"^x\.jpg: not a readable image \(not JPEG, PNG"):  # not even opened
        decode_image(eps, 32, "x.jpg")
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # what Pillow would have done by default


@pytest.mark.parametrize("parallel", ["processes", "threads", "serial"])
def test_parallel_decoding_matches_serial_and_keeps_order(parallel: str):
    files = [(f"{i}.png", encode(Image.new("RGB", (8 + i % 5, 9), (i, 2 * i % 256, 7)), "PNG")) for i in range(40)]
    expected = np.stack([decode_image(data, 8, name) for name, data in files])
    decoder = ImageDecoder(8, workers=2, parallel=parallel)
    decoder.CHUNK_FILES = 3  # many chunks, several in flight
    with decoder:
        for name, data in files:
            decoder.add(name, data)
        names, images, skipped = decoder.finish()
    assert names == [name for name, _ in files] and skipped == []
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(decode_images(files, 8), expected)


def test_skip_mode_drops_bad_files_and_reports_them():
    good = encode(Image.new("RGB", (8, 8)), "PNG")
    files = [("a.png", good), ("b.jpg", b"text"), ("c.png", good)]
    with ImageDecoder(8, skip_bad=True, workers=2) as decoder:
        for name, data in files:
            decoder.add(name, data)
        names, images, skipped = decoder.finish()
    assert names == ["a.png", "c.png"] and images.shape == (2, 8, 8, 3)
    assert len(skipped) == 1 and skipped[0].startswith("b.jpg: not a readable image")


# ----------------------------------------------------------------------------- layouts


def test_cifar10_binary_layout(binary_archive: Path):
    dataset = read_dataset(binary_archive, Options())
    assert dataset.classes == CLASSES
    assert dataset.train_images.shape == (300, 32, 32, 3) and dataset.test_images.shape == (60, 32, 32, 3)
    # Same generator as the fixture: the first batch's records come back pixel for pixel.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=60)
    np.testing.assert_array_equal(dataset.train_labels[:60], labels)
    np.testing.assert_array_equal(dataset.train_images[:60], learnable_images(labels, seed=0))


def test_cifar10_binary_resized_to_another_image_size(binary_archive: Path):
    dataset = read_dataset(binary_archive, Options(image_size=16))
    assert dataset.train_images.shape == (300, 16, 16, 3)


def make_cifar100(path: Path, train: int = 40, test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
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
    dataset = read_dataset(tmp_path / "c100.tar.gz", Options(cifar100_label=label))
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
    datasets = [read_dataset(source, Options()) for source in sources]
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
    dataset = read_dataset(zip_of(tmp_path / "a.zip", files), Options())
    assert len(dataset.train_labels) == 12 and dataset.ignored == 5


def test_test_split_carved_from_train(tmp_path: Path):
    files = {name: data for name, data in folder_files(train=10).items() if "/test/" not in name}
    archive = tar_of(tmp_path / "a.tgz", files)
    dataset = read_dataset(archive, Options(test_from_train=0.2))
    assert np.bincount(dataset.test_labels).tolist() == [2, 2, 2]  # stratified: 20% of each class
    assert np.bincount(dataset.train_labels).tolist() == [8, 8, 8]
    again = read_dataset(archive, Options(test_from_train=0.2))
    np.testing.assert_array_equal(again.test_images, dataset.test_images)  # seeded
    other_seed = read_dataset(archive, Options(test_from_train=0.2, seed=7))
    assert not np.array_equal(other_seed.test_images, dataset.test_images)
    every = np.concatenate([dataset.train_images, dataset.test_images]).reshape(30, -1)
    assert len(np.unique(every, axis=0)) == 30  # disjoint: no image in both


def test_skipped_images_are_counted(tmp_path: Path):
    files = folder_files()
    files["photos/train/bird/broken.jpg"] = b"not a jpeg"
    archive = tar_of(tmp_path / "a.tgz", files)
    with pytest.raises(StageError, match=r"photos/train/bird/broken\.jpg: not a readable image"):
        read_dataset(archive, Options())
    dataset = read_dataset(archive, Options(on_bad_image="skip"))
    assert len(dataset.skipped) == 1 and len(dataset.train_labels) == 12


def test_iter_members_reads_through_the_archive_api(tmp_path: Path):
    archive = tar_of(tmp_path / "a.tar", {"x/y.txt": b"hello", "./z.txt": b"zz"}, "w")
    members = {m.name: m.read() for m in iter_members(archive, 10, 1000) if not m.is_dir}
    assert members == {"x/y.txt": b"hello", "z.txt": b"zz"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]  # nothing extracted


def test_real_mini_jpeg_archive():
    if not MINI_JPG.exists():
        pytest.skip(f"{MINI_JPG} not present")
    dataset = read_dataset(MINI_JPG, Options())
    assert len(dataset.classes) == 10
    assert dataset.train_images.shape == (1000, 32, 32, 3) and dataset.test_images.shape == (200, 32, 32, 3)
    with tarfile.open(MINI_JPG) as archive:  # the first airplane, decoded by Pillow directly
        member = archive.extractfile("cifar10-jpg-mini/train/airplane/0000.jpg").read()
    np.testing.assert_array_equal(dataset.train_images[0], np.asarray(Image.open(io.BytesIO(member)).convert("RGB")))


# ----------------------------------------------------------------------------- the stage


def run_stage(workdir: Path, raw: Path, overrides: dict | None = None) -> subprocess.CompletedProcess:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [sys.executable, "-m", "stages.preprocess", str(raw), "data/prepared", "metrics/preprocess.json"],
        cwd=workdir, env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_stage_outputs_are_byte_reproducible_and_counted(tmp_path: Path):
    files = folder_files(train=10)
    files["photos/test/bird/broken.png"] = b"oops"
    archive = tar_of(tmp_path / "a.tgz", files)
    outputs = []
    for run in ("one", "two"):
        workdir = tmp_path / run
        workdir.mkdir()
        result = run_stage(workdir, archive, {"preprocess.on_bad_image": "skip"})
        assert result.returncode == 0, result.stderr
        assert "warning: skipped photos/test/bird/broken.png: not a readable image" in result.stderr
        files = sorted(p for p in workdir.rglob("*") if p.is_file())
        outputs.append({p.relative_to(workdir).as_posix(): p.read_bytes() for p in files})
    assert outputs[0] == outputs[1]
    metrics = json.loads(outputs[0]["metrics/preprocess.json"])
    assert metrics == {
        "classes": 3, "train_images": 27, "validation_images": 3, "test_images": 6,
        "skipped_bad_images": 1, "ignored_files": 0,
    }  # fmt: skip
    images, labels = load_split(tmp_path / "one" / "data" / "prepared" / "test.npz")
    assert images.shape == (6, 32, 32, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.e2e
def test_dvc_repro_on_an_image_folder_with_a_bad_image(tmp_path: Path):
    """download packs a folder, preprocess skips the bad photo, and `dvc metrics show` reports it."""
    photos = make_image_folder(tmp_path / "photos", train=8, test=2)
    (photos / "train" / "bird" / "broken.jpg").write_text("not a photo")
    repo = make_project(tmp_path / "repo", make_cifar_binary_archive(tmp_path / "unused.tar.gz"))
    set_params(repo, {"download.url": str(photos), "download.checksum": None, "preprocess.on_bad_image": "skip"})
    sh(repo, "dvc", "repro", "preprocess")
    metrics = json.loads((repo / "metrics" / "preprocess.json").read_text())
    assert metrics["skipped_bad_images"] == 1 and metrics["train_images"] + metrics["validation_images"] == 24
    shown = sh(repo, "dvc", "metrics", "show").stdout
    assert "metrics/preprocess.json" in shown and "skipped_bad_images" in shown
    assert "skipped photos" not in shown
