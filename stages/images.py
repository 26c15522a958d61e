"""Decoding image files into fixed-size RGB uint8 arrays; shared by preprocess and predict."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from stages.common import StageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def fit_image(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to size x size (no distortion of the content)."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width - side) // 2 + side, (height - side) // 2 + side)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def decode_image(data: bytes, size: int, name: str) -> np.ndarray:
    """Decode any Pillow-readable image to an RGB uint8 array of shape (size, size, 3)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)  # phone photos are stored sideways + a tag
            image = image.convert("RGB")
            return np.asarray(fit_image(image, size), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise StageError(f"{name}: not a readable image ({' '.join(str(error).split())})") from None


def decode_images(files: Sequence[tuple[str, bytes]], size: int, description: str = "decode") -> np.ndarray:
    """Decode many (name, bytes) pairs in parallel threads (Pillow releases the GIL while decoding)."""
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    chunk = 256

    def decode_chunk(start: int) -> int:
        for i, (name, data) in enumerate(files[start : start + chunk], start):
            images[i] = decode_image(data, size, name)
        return min(chunk, len(files) - start)

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(files), desc=description, unit="img") as bar:
        for done in pool.map(decode_chunk, range(0, len(files), chunk)):
            bar.update(done)
    return images
