"""classifier/data/images.py and decoder.py: decoding any image file to RGB size x size, fitting, bad files, the parallel decoder."""

from __future__ import annotations

import io
import signal

import numpy as np
import pytest
from PIL import Image

from classifier.core.errors import Interrupted, StageError
from classifier.data.decoder import ImageDecoder, decode_images
from classifier.data.images import decode_image, fit_image

from conftest import encode


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
    with pytest.raises(
        StageError, match=r"^notes\.jpg: not a readable image \(not JPEG, PNG, BMP, GIF, WEBP, TIFF\)$"
    ):
        decode_image(b"just some text", 32, "notes.jpg")
    jpeg = encode(Image.new("RGB", (32, 32), (1, 2, 3)), "JPEG")
    with pytest.raises(StageError, match=r"(?i)^cut\.jpg: not a readable image \(.*truncated"):
        decode_image(jpeg[: len(jpeg) // 2], 32, "cut.jpg")
    with pytest.raises(
        StageError, match=r"^big\.png: image is 200x100 = 20,000 pixels, over the limit of 10,000"
    ):
        decode_image(encode(Image.new("RGB", (200, 100)), "PNG"), 32, "big.png", max_pixels=10_000)


def test_formats_that_run_programs_are_never_opened():
    """EPS would start Ghostscript; it is refused whatever the file is called."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(StageError, match=r"^x\.jpg: not a readable image \(not JPEG, PNG"):  # not even opened
        decode_image(eps, 32, "x.jpg")
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # what Pillow would have done by default


@pytest.mark.parametrize("parallel", ["processes", "threads", "serial"])
def test_parallel_decoding_matches_serial_and_keeps_order(parallel: str):
    files = [
        (f"{i}.png", encode(Image.new("RGB", (8 + i % 5, 9), (i, 2 * i % 256, 7)), "PNG")) for i in range(40)
    ]
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


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_decoder_processes_ended_from_outside(signal_number: int) -> None:
    """SIGTERM to every decoder process means the process group got it: interrupted, even before this
    process has run its own handler. Another death (the kernel's SIGKILL when out of memory, a crash) is an
    error that says so. Either way no process is left."""
    data = encode(solid("RGB", (255, 0, 0)), "PNG")
    decoder = ImageDecoder(8, workers=2)
    decoder.CHUNK_FILES = 4
    expected = Interrupted if signal_number == signal.SIGTERM else StageError
    with pytest.raises(expected) as raised, decoder:
        for i in range(4):  # the first chunk starts the pool
            decoder.add(f"{i}.png", data)
        processes = list(decoder.pool._processes.values())
        for process in processes:  # the pool may end the second one itself once the first is gone
            process.kill() if signal_number == signal.SIGKILL else process.terminate()
            process.join(10)
        for i in range(4, 12):
            decoder.add(f"{i}.png", data)
        decoder.finish()
    if signal_number == signal.SIGTERM:
        assert raised.value.signal_number == signal.SIGTERM
    else:
        assert "decoder process" in str(raised.value)
    assert processes[0].exitcode == -signal_number
    assert not any(process.is_alive() for process in processes)
