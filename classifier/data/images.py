"""Decoding one image file into a fixed-size RGB uint8 array; shared by preprocess and predict (many files
at once, in worker processes: classifier/data/decoder.py).

Any size and mode goes in (grayscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated phone photos); an
RGB array of size x size comes out. Files come from archives of unknown origin, so only a few
well-known formats are opened, and the pixel count is checked from the header before decoding.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from classifier.core.errors import StageError

# HEIC (iPhone photos) is not readable, but counts as an image so that it is reported, not ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif")
# Formats Pillow may open. Others (EPS runs Ghostscript, for one) are refused whatever the file is called.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
FIT_MODES = ("crop", "pad", "stretch")
DEFAULT_MAX_PIXELS = 50_000_000
BACKGROUND = (255, 255, 255)  # what transparent pixels become
ORIENTATION = 0x0112  # the EXIF tag phones use to say "rotate me"

# We check the pixel count ourselves (max_pixels) and say which file; Pillow's warning would only add noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class BadImage(StageError):
    """An image file that cannot be decoded, or has more pixels than allowed."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def fit_image(image: Image.Image, size: int, fit: str = "crop") -> Image.Image:
    """Resize to size x size. crop: centre square (no distortion, loses the edges); pad: whole
    image with black bars; stretch: whole image, distorted."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    if fit == "stretch":
        return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if fit == "pad":
        scale = size / max(width, height)
        inner = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(
            image.resize(inner, Image.Resampling.BICUBIC, reducing_gap=3.0),
            ((size - inner[0]) // 2, (size - inner[1]) // 2),
        )
        return canvas
    if fit != "crop":
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side), reducing_gap=3.0
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB: 16-bit scaled down (Pillow would clip), transparency onto white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # I;16, I;16B, ... (16-bit grayscale PNG or TIFF) and I
        pixels = np.asarray(image).astype(np.int64)
        return Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8)).convert("RGB")
    if image.has_transparency_data:  # RGBA, LA, PA, or a palette/grayscale with a transparent colour
        background = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def decode_image(
    data: bytes, size: int, name: str, fit: str = "crop", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode an image file's bytes to an RGB uint8 array of shape (size, size, 3).

    Raises BadImage (a StageError) naming `name` if the bytes are not a readable image or have too
    many pixels. `fit` says what to do with non-square images (see fit_image).
    """
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    limit = f"over the limit of {max_pixels:,} (preprocess.limits.max_image_megapixels)"
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as error:  # Pillow's own hard limit, far above ours
        raise BadImage(f"{name}: image has too many pixels, {limit} ({_reason(error)})") from None
    except UnidentifiedImageError:
        raise BadImage(f"{name}: not a readable image (not {', '.join(FORMATS)})") from None
    except Exception as error:  # noqa: BLE001 (Pillow raises many types on malformed files)
        raise BadImage(f"{name}: not a readable image ({_reason(error)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(f"{name}: image is {width}x{height} = {width * height:,} pixels, {limit}")
    try:
        if width >= 2 * size and height >= 2 * size:
            # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers size x size.
            image.draft(None, (size, size))
        # Parsing EXIF costs more than decoding a 32x32 JPEG: skip it when a JPEG has no EXIF block.
        if (image.format != "JPEG" or "exif" in image.info) and image.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        image.load()
        return np.asarray(fit_image(to_rgb(image), size, fit), dtype=np.uint8)
    except Exception as error:  # noqa: BLE001 (as above)
        raise BadImage(f"{name}: not a readable image ({_reason(error)})") from None


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize square RGB uint8 images (N, s, s, 3) to (N, size, size, 3)."""
    return np.stack([np.asarray(fit_image(Image.fromarray(image), size)) for image in images])


def _reason(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
