"""Prepared split files (.npz): read back exactly, 64-byte aligned, handed to TensorFlow without a copy."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from classifier.core.errors import StageError
from classifier.data.splits import ALIGNMENT, load_split, save_split

from conftest import PROJECT, tool_env


@pytest.mark.parametrize("rows", [0, 1, 7, 300])
def test_load_split_reads_back_what_save_split_wrote_aligned(tmp_path: Path, rows: int) -> None:
    rng = np.random.default_rng(rows)
    images = rng.integers(0, 256, size=(rows, 5, 6, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=rows)
    save_split(tmp_path / "split.npz", images, labels)

    loaded_images, loaded_labels = load_split(tmp_path / "split.npz")

    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_labels, labels.astype(np.int32))
    assert (loaded_images.dtype, loaded_labels.dtype) == (np.uint8, np.int32)
    if rows:  # an empty array has no data to align
        assert loaded_images.ctypes.data % ALIGNMENT == 0 and loaded_labels.ctypes.data % ALIGNMENT == 0
    with np.load(tmp_path / "split.npz") as reference:  # the files stay plain .npz for any reader
        np.testing.assert_array_equal(reference["images"], loaded_images)


def test_a_truncated_split_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("images.npy", "w") as member:
            header = {"descr": "|u1", "fortran_order": False, "shape": (10, 4, 4, 3)}
            np.lib.format.write_array_header_1_0(member, header)
            member.write(bytes(100))  # 480 bytes promised
        with archive.open("labels.npy", "w") as member:
            np.lib.format.write_array(member, np.zeros(10, np.int32))

    with pytest.raises(StageError, match=r"train\.npz: images\.npy is truncated"):
        load_split(path)


# Loads a split of `megabytes` MB in a fresh process and prints how much its peak memory grew.
LOAD_SCRIPT = """
import json, sys
import numpy as np
from classifier.training.batches import load_images
import tensorflow as tf

def status_mb(field):
    line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024

tf.constant(0) + 1  # TensorFlow's own start-up memory, before the measurement
before = status_mb("VmRSS")
with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")  # peak RSS (VmHWM) := current RSS, so the peak below is the loading's own
images, labels = load_images(sys.argv[1])
grown = status_mb("VmHWM") - before
sample = images[::997].numpy()
print(json.dumps({
    "grown_mb": grown, "shape": images.shape.as_list(), "sample_sum": int(sample.sum(dtype=np.int64)),
    "device": images.device, "labels": int(labels.sum()),
}))
"""


def test_load_images_holds_the_images_once(tmp_path: Path) -> None:
    """A plain tf.constant of the array would hold it twice at least (numpy's copy and TensorFlow's)."""
    rows = 40_000  # 40,000 x 32 x 32 x 3 bytes = 123 MB (117 MiB)
    images = np.random.default_rng(0).integers(0, 256, size=(rows, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(rows) % 10
    save_split(tmp_path / "train.npz", images, labels)

    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "train.npz")],
        cwd=PROJECT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    size_mib = images.nbytes / 2**20
    assert loaded["shape"] == [rows, 32, 32, 3]
    assert loaded["sample_sum"] == int(images[::997].sum(dtype=np.int64))
    assert loaded["labels"] == int(labels.sum())
    assert loaded["device"].endswith("CPU:0")
    assert size_mib * 0.9 < loaded["grown_mb"] < size_mib * 1.25, loaded
