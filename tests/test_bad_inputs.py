"""A corpus of bad inputs for the download and preprocess stages, generated here.

Each case runs the real stage (`python -m stages.X`) in a fresh workspace and asserts: exit code 1,
exactly one `error:` line that names the file, member or URL and the problem, no traceback, and a
workspace that is byte-for-byte what it was before (no output created or modified, nothing written
anywhere else; TMPDIR points into the workspace too). Preprocess workspaces start with the outputs
of an earlier run, so "modified" is checked; download workspaces start without one, so "created" is.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from local_http import FileServer, file_server, refused_url
from PIL import Image

from conftest import CLASSES, PROJECT, cifar_binary_bytes, learnable_images, make_cifar_binary_archive

RAW = "data/raw/dataset.archive"
PAYLOAD = b"x" * 50_000
NETWORK = {"download.connect_timeout": 0.5, "download.read_timeout": 0.5, "download.retries": 1, "download.retry_delay": 0.01}


@dataclass
class Case:
    stage: str  # "download" or "preprocess"
    make: Callable[[Path, str], dict]  # builds the input in the workspace (given the server URL); returns params
    expect: list[str]  # all must appear in the error line
    params: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- input builders


def png(image: Image.Image | None = None) -> bytes:
    buffer = io.BytesIO()
    (image or Image.new("RGB", (32, 32), (10, 200, 30))).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(learnable_images(np.zeros(1, dtype=int))[0]).save(buffer, "JPEG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims to be width x height: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def good_folder(root: str = "photos") -> dict[str, bytes]:
    return {f"{root}/{split}/{cls}/{i}.png": png() for split in ("train", "test") for cls in CLASSES for i in range(2)}


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]] | dict[str, bytes], mode: str = "w:gz") -> None:
    if isinstance(members, dict):
        members = [member(name, data) for name, data in members.items()]
    with tarfile.open(path, mode) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)


def raw_tar(members, mode: str = "w:gz") -> Callable[[Path, str], dict]:
    """A builder writing these members as the preprocess input."""

    def make(ws: Path, _url: str) -> dict:
        write_tar(ws / RAW, members() if callable(members) else members, mode)
        return {}

    return make


def raw_bytes(data: bytes) -> Callable[[Path, str], dict]:
    def make(ws: Path, _url: str) -> dict:
        (ws / RAW).write_bytes(data)
        return {}

    return make


def raw_zip(files: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> Callable[[Path, str], dict]:
    def make(ws: Path, _url: str) -> dict:
        with zipfile.ZipFile(ws / RAW, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
            for name in symlinks:
                info = zipfile.ZipInfo(name)
                info.create_system, info.external_attr = 3, (0o120777 << 16)  # S_IFLNK
                archive.writestr(info, "/etc/passwd")
        return {}

    return make


def binary_members(batch_sizes=(20,) * 5, classes=CLASSES, labels_of=None, skip=(), meta=True) -> dict[str, bytes]:
    """A CIFAR-10 binary layout; labels_of(name, count) may replace the labels of a batch."""
    files = {"cifar-10-batches-bin/batches.meta.txt": ("\n".join(classes) + "\n").encode()} if meta else {}
    names = [f"data_batch_{i}.bin" for i in range(1, len(batch_sizes) + 1)] + ["test_batch.bin"]
    for name, count in zip(names, list(batch_sizes) + [20]):
        if name in skip:
            continue
        labels = np.arange(count) % len(classes)
        if labels_of:
            labels = labels_of(name, labels)
        files[f"cifar-10-batches-bin/{name}"] = cifar_binary_bytes(learnable_images(labels % 256), labels)
    return files


def truncated(name: str, by: int) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    def cut(files: dict[str, bytes]) -> dict[str, bytes]:
        return {n: (d[:-by] if n.endswith(name) else d) for n, d in files.items()}

    return cut


class RunsCode:
    """Unpickling this creates a file: the proof that an archive ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def pickled_archive(ws: Path, _url: str) -> dict:
    payload = pickle.dumps({"data": RunsCode(str(ws / "pwned")), "labels": [0]})
    names = ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    write_tar(ws / RAW, {f"cifar-10-batches-py/{name}": payload for name in names})
    return {}


def download_from(url_of: Callable[[Path, str], str], checksum: str | None = None) -> Callable[[Path, str], dict]:
    def make(ws: Path, server_url: str) -> dict:
        return {"download.url": url_of(ws, server_url), "download.checksum": checksum, **NETWORK}

    return make


def local_file(ws: Path, _url: str) -> str:
    (ws / "input.tar.gz").write_bytes(PAYLOAD)
    return str(ws / "input.tar.gz")


def folder_with_symlink(ws: Path, _url: str) -> str:
    (ws / "photos" / "train" / "cat").mkdir(parents=True)
    (ws / "photos" / "train" / "cat" / "1.png").write_bytes(png())
    (ws / "photos" / "train" / "cat" / "2.png").symlink_to("/etc/passwd")
    return str(ws / "photos")


# ----------------------------------------------------------------------------- the corpus

CASES: dict[str, Case] = {
    # download
    "checksum mismatch": Case(
        "download", download_from(local_file, "sha256:" + "0" * 64),
        ["input.tar.gz", "checksum mismatch", "expected sha256:000", "got sha256:"]),
    "http 404": Case(
        "download", download_from(lambda ws, url: f"{url}/ok/missing.tar.gz"), ["/ok/missing.tar.gz", "HTTP 404 Not Found"]),
    "connection refused": Case(
        "download", download_from(lambda ws, url: refused_url()), ["http://127.0.0.1:", "refused", "gave up after 2 attempts"]),
    "server stalls mid-body (read timeout)": Case(
        "download", download_from(lambda ws, url: f"{url}/stall-body/data.tar.gz"),
        ["/stall-body/data.tar.gz", "timed out reading", "download.read_timeout"]),
    "server never answers (connect timeout)": Case(
        "download", download_from(lambda ws, url: f"{url}/stall-headers/data.tar.gz"),
        ["/stall-headers/data.tar.gz", "timed out connecting", "download.connect_timeout"]),
    "server drops the connection every time": Case(
        "download", download_from(lambda ws, url: f"{url}/drop-always/data.tar.gz"),
        ["/drop-always/data.tar.gz", "connection closed after 37,500 of 50,000 bytes", "gave up after 2 attempts"]),
    "missing local file": Case(
        "download", download_from(lambda ws, url: str(ws / "nowhere.tar.gz")), ["nowhere.tar.gz", "no such file"]),
    "unsupported URL scheme": Case(
        "download", download_from(lambda ws, url: "ftp://example.com/x.tar"), ["ftp://example.com/x.tar", "unsupported URL scheme"]),
    "folder with a symlink": Case(
        "download", download_from(folder_with_symlink), ["photos/train/cat/2.png", "symbolic link"]),
    # containers
    "not an archive": Case("preprocess", raw_bytes(b"hello, I am a text file\n" * 40), [RAW, "not a .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip archive"]),
    "truncated gzip": Case(
        "preprocess", lambda ws, url: (make_cifar_binary_archive(ws / "full.tgz"), (ws / RAW).write_bytes((ws / "full.tgz").read_bytes()[:6000]), (ws / "full.tgz").unlink(), {})[-1],
        [RAW, "truncated or corrupt"]),
    "empty tar archive": Case("preprocess", raw_tar({}), [RAW, "the archive is empty"]),
    "empty zip archive": Case("preprocess", raw_zip({}), [RAW, "the archive is empty"]),
    "too many members": Case(
        "preprocess", raw_tar(good_folder()), [RAW, "more than 5 members", "max_members"], {"preprocess.limits.max_members": 5}),
    "too many bytes once uncompressed": Case(
        "preprocess", raw_tar(good_folder()), [RAW, "more than 200 bytes once uncompressed", "max_uncompressed_mb"],
        {"preprocess.limits.max_uncompressed_mb": 0.0002}),
    # unsafe members
    "member named ../evil": Case("preprocess", raw_tar([member("../evil", b"x")]), [RAW, "'../evil'", "points outside"]),
    "member with an absolute path": Case("preprocess", raw_tar([member("/etc/evil", b"x")]), [RAW, "'/etc/evil'", "points outside"]),
    "zip-slip member": Case("preprocess", raw_zip({"photos/../../evil.png": png()}), [RAW, "'photos/../../evil.png'", "points outside"]),
    "symlink member": Case(
        "preprocess", raw_tar([member("photos/train/cat/link.png", kind=tarfile.SYMTYPE, link="/etc/passwd")]),
        [RAW, "link.png", "symbolic link"]),
    "hard link member": Case(
        "preprocess", raw_tar([member("a.png", png()), member("hard.png", kind=tarfile.LNKTYPE, link="a.png")]),
        [RAW, "hard.png", "hard link"]),
    "device member": Case("preprocess", raw_tar([member("dev/sda", kind=tarfile.BLKTYPE)]), [RAW, "dev/sda", "device file"]),
    "zip symlink member": Case("preprocess", raw_zip({}, symlinks=("photos/link.png",)), [RAW, "photos/link.png", "symbolic link"]),
    "duplicate member": Case(
        "preprocess", raw_tar([member("photos/train/cat/1.png", png()), member("photos/train/cat/1.png", b"x")]),
        [RAW, "photos/train/cat/1.png", "appears twice"]),
    "pickled archive that would run code": Case(
        "preprocess", pickled_archive, [RAW, "cifar-10-batches-py/", "pickled", "binary version"]),
    # CIFAR binary
    "binary batch of the wrong size": Case(
        "preprocess", raw_tar(truncated("data_batch_2.bin", 100)(binary_members())),
        [RAW, "data_batch_2.bin", "61,360 bytes", "not a whole number of 3073-byte records"]),
    "binary label out of range": Case(
        "preprocess", raw_tar(binary_members(labels_of=lambda n, l: np.where(np.arange(len(l)) == 4, 7, l) if n == "test_batch.bin" else l)),
        [RAW, "test_batch.bin", "record 4 has label 7", "out of range for 3 classes"]),
    "binary class without training images": Case(
        "preprocess", raw_tar(binary_members(labels_of=lambda n, l: l % 2)), [RAW, "no training images of class 'bird'"]),
    "binary without batches.meta.txt": Case("preprocess", raw_tar(binary_members(meta=False)), [RAW, "without batches.meta.txt"]),
    "binary with a missing batch": Case(
        "preprocess", raw_tar(binary_members(skip=("data_batch_3.bin",))), [RAW, "without data_batch_3.bin"]),
    # image folders
    "class folder with no images": Case(
        "preprocess",
        raw_tar(lambda: [member(n, d) for n, d in good_folder().items() if "/train/bird/" not in n] + [member("photos/train/bird", kind=tarfile.DIRTYPE)]),
        [RAW, "photos/train/bird/", "has no images"]),
    "corrupt JPEG": Case(
        "preprocess", raw_tar({**good_folder(), "photos/train/cat/bad.jpg": jpeg()[:400]}),
        [RAW, "photos/train/cat/bad.jpg", "not a readable image", "runcated"]),
    "text file named .jpg": Case(
        "preprocess", raw_tar({**good_folder(), "photos/test/bird/notes.jpg": b"shopping list: milk\n"}),
        [RAW, "photos/test/bird/notes.jpg", "not a readable image (not JPEG, PNG, BMP, GIF, WEBP, TIFF)"]),
    "oversized image": Case(
        "preprocess", raw_tar({**good_folder(), "photos/train/cat/huge.png": png_header_only(10_000, 8_000)}),
        [RAW, "photos/train/cat/huge.png", "10000x8000 = 80,000,000 pixels", "max_image_megapixels"]),
    "image outside a class folder": Case(
        "preprocess", raw_tar({**good_folder(), "photos/train/stray.png": png()}), [RAW, "photos/train/stray.png", "not in a class folder"]),
    "test class without a train folder": Case(
        "preprocess", raw_tar({**good_folder(), "photos/test/dog/1.png": png()}), [RAW, "photos/test/dog/", "no matching train/dog/"]),
    "no test folder": Case(
        "preprocess", raw_tar({n: d for n, d in good_folder().items() if "/test/" not in n}),
        [RAW, "no photos/test/ folder", "preprocess.test_from_train"]),
    "no dataset layout at all": Case("preprocess", raw_tar({"notes/readme.txt": b"hi"}), [RAW, "no dataset found"]),
    "bad on_bad_image param": Case(
        "preprocess", raw_tar(good_folder()), ["params.yaml", "preprocess.on_bad_image = 'ignore'", "one of error, skip"],
        {"preprocess.on_bad_image": "ignore"}),
}  # fmt: skip


# ----------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def server() -> FileServer:
    with file_server() as server:
        server.files["data.tar.gz"] = PAYLOAD
        yield server


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its content (None for folders); links are not followed."""
    return {
        path.relative_to(root).as_posix(): None if path.is_dir() and not path.is_symlink() else
        (b"-> " + os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
        for path in sorted(root.rglob("*"))
    }  # fmt: skip


def set_dotted(params: dict, overrides: dict) -> None:
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value


def test_corpus_is_large_enough():
    assert len(CASES) >= 15


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, server: FileServer, tmp_path: Path):
    case = CASES[name]
    ws = tmp_path / "ws"
    for folder in ("data/raw", "data/prepared", "metrics", ".tmp"):
        (ws / folder).mkdir(parents=True)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    set_dotted(params, {"download.url": str(ws / "unused.tar.gz"), "download.checksum": None})
    set_dotted(params, case.make(ws, server.url))
    set_dotted(params, case.params)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    if case.stage == "download":
        args = [RAW]
    else:  # the outputs of an earlier, successful run: they must survive untouched
        args = [RAW, "data/prepared", "metrics/preprocess.json"]
        for output in ("train.npz", "validation.npz", "test.npz", "classes.json"):
            (ws / "data" / "prepared" / output).write_bytes(b"earlier run's " + output.encode())
        (ws / "metrics" / "preprocess.json").write_text("{}\n")
    before = snapshot(ws)

    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TMPDIR": str(ws / ".tmp"), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{case.stage}", *args], cwd=ws, env=env, capture_output=True, text=True, timeout=60
    )

    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stderr}"
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in case.expect:
        assert part in errors[0], f"{part!r} not in {errors[0]!r}"
    assert snapshot(ws) == before
