"""The prepared-data format: one byte-reproducible .npz per split (uint8 images, int32 labels)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from classifier.core.errors import StageError
from classifier.core.files import FIXED_ZIP_DATE, atomic_path

# What Eigen, and so TensorFlow's CPU kernels, expect of a buffer they use in place.
ALIGNMENT = 64


def save_arrays(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays like np.savez, but with fixed zip dates so equal arrays give equal bytes."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_ZIP_DATE)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def save_split(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    save_arrays(path, images=images.astype(np.uint8, copy=False), labels=labels.astype(np.int32))


def load_split(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a split written by save_split, each array starting on a 64-byte boundary."""
    with zipfile.ZipFile(path) as archive:
        return read_aligned_array(archive, "images.npy"), read_aligned_array(archive, "labels.npy")


def read_aligned_array(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """Read one .npy member straight into a 64-byte-aligned array, 1 MB at a time.

    TensorFlow can use such a buffer in place (classifier.training.batches.load_images), so the images are held once,
    not once by numpy and again by TensorFlow; np.load's buffers are only 16-byte aligned.
    """
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
        if fortran_order or dtype.hasobject:
            raise StageError(f"{archive.filename}: {name} is not a C-ordered array of numbers; rebuild it")
        raw = np.empty(int(np.prod(shape)) * dtype.itemsize + ALIGNMENT, dtype=np.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        array = raw[start : start + raw.size - ALIGNMENT].view(dtype).reshape(shape)
        buffer = memoryview(array.reshape(-1).view(np.uint8))  # its bytes, in place
        for offset in range(0, len(buffer), 1 << 20):
            chunk = buffer[offset : offset + (1 << 20)]
            if member.readinto(chunk) != len(chunk):
                raise StageError(f"{archive.filename}: {name} is truncated; rebuild it with `dvc repro`")
    return array
