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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from classifier.core.dotted_keys import set_dotted

from conftest import CLASSES, PROJECT, cifar_binary_bytes, learnable_images, run_two_at_a_time
from local_http import FileServer, file_server, refused_url

RAW = "data/raw/dataset.archive"
PAYLOAD = b"x" * 50_000
# Short timeouts and one quick retry: every download case takes well under two seconds.
NETWORK = {
    "download.connect_timeout": 0.5, "download.read_timeout": 0.5, "download.retries": 1, "download.retry_delay": 0.01,
}  # fmt: skip


@dataclass
class Case:
    stage: str  # "download" or "preprocess"
    make: Callable[[Path, str], dict]  # (workspace, server URL) -> params; writes the input
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
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def good_folder() -> dict[str, bytes]:
    return {
        f"photos/{split}/{cls}/{i}.png": png()
        for split in ("train", "test")
        for cls in CLASSES
        for i in (1, 2)
    }


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_bytes(members: dict[str, bytes] | list[tuple], mode: str = "w:gz") -> bytes:
    """A tar(.gz) of {name: content}, or of member() tuples (for links, devices and folders)."""
    if isinstance(members, dict):
        members = [member(name, data) for name, data in members.items()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, 0o120777 << 16  # Unix, S_IFLNK
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def binary_members(batches: int = 5, labels_of=None, skip: str = "", meta: bool = True) -> dict[str, bytes]:
    """A small CIFAR-10 binary layout; labels_of(file name, labels) may change a file's labels."""
    files = {"cifar-10-batches-bin/batches.meta.txt": ("\n".join(CLASSES) + "\n").encode()} if meta else {}
    for name in [f"data_batch_{i}.bin" for i in range(1, batches + 1)] + ["test_batch.bin"]:
        labels = np.arange(20) % len(CLASSES)
        if labels_of:
            labels = labels_of(name, labels)
        if name != skip:
            files[f"cifar-10-batches-bin/{name}"] = cifar_binary_bytes(learnable_images(labels % 3), labels)
    return files


def label_7_in_test_record_4(name: str, labels: np.ndarray) -> np.ndarray:
    return np.where(np.arange(len(labels)) == 4, 7, labels) if name == "test_batch.bin" else labels


def folder_with(extra: dict[str, bytes] | None = None, without: str = "") -> dict[str, bytes]:
    """good_folder() plus `extra` members, minus those whose names start with `without`."""
    kept = {name: data for name, data in good_folder().items() if not (without and name.startswith(without))}
    return {**kept, **(extra or {})}


class RunsCode:
    """Unpickling this creates a file: the proof that an archive ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


# Builders: each writes the input into a workspace `ws` and returns the params to set.


def raw(data: bytes | Callable[[Path], bytes]) -> Callable[[Path, str], dict]:
    """The preprocess input data/raw/dataset.archive holds `data`."""

    def make(ws: Path, _url: str) -> dict:
        (ws / RAW).write_bytes(data(ws) if callable(data) else data)
        return {}

    return make


def pickled_archive(ws: Path) -> bytes:
    payload = pickle.dumps({"data": RunsCode(str(ws / "pwned")), "labels": [0]})  # ws/pwned would appear
    names = ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
    return tar_bytes({f"cifar-10-batches-py/{name}": payload for name in names})


def download(url_of: Callable[[Path, str], str], checksum: str | None = None) -> Callable[[Path, str], dict]:
    """The download stage fetches url_of(ws, test server URL)."""

    def make(ws: Path, server_url: str) -> dict:
        return {"download.url": url_of(ws, server_url), "download.checksum": checksum, **NETWORK}

    return make


def served(path: str) -> Callable[[Path, str], str]:
    return lambda ws, server_url: server_url + path


def local_file(ws: Path, _url: str) -> str:
    (ws / "input.tar.gz").write_bytes(PAYLOAD)
    return str(ws / "input.tar.gz")


def folder_with_symlink(ws: Path, _url: str) -> str:
    (ws / "photos" / "train" / "cat").mkdir(parents=True)
    (ws / "photos" / "train" / "cat" / "1.png").write_bytes(png())
    (ws / "photos" / "train" / "cat" / "2.png").symlink_to("/etc/passwd")
    return str(ws / "photos")


# ----------------------------------------------------------------------------- the corpus

ARCHIVE_FORMATS = "not a .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip archive"
NOT_IMAGE = "not a readable image (not JPEG, PNG, BMP, GIF, WEBP, TIFF)"
SYMLINK, HARDLINK, DEVICE, DIRECTORY = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE

CASES: dict[str, Case] = {
    # download: sources, HTTP and checksums
    "checksum mismatch": Case("download", download(local_file, "sha256:" + "0" * 64),
                              ["input.tar.gz", "checksum mismatch", "expected sha256:000", "got sha256:"]),
    "HTTP 404": Case("download", download(served("/ok/missing.tar.gz")),
                     ["/ok/missing.tar.gz", "HTTP 404 Not Found"]),
    "connection refused": Case("download", download(lambda ws, url: refused_url()),
                               ["http://127.0.0.1:", "refused", "gave up after 2 attempts"]),
    "server stalls mid-body": Case("download", download(served("/stall-body/data.tar.gz")),
                                   ["/stall-body/data.tar.gz", "timed out reading", "download.read_timeout"]),
    "server never answers": Case("download", download(served("/stall-headers/data.tar.gz")),
                                 ["/stall-headers/data.tar.gz", "timed out connecting", "connect_timeout"]),
    "server drops the connection every time": Case(
        "download", download(served("/drop-always/data.tar.gz")),
        ["/drop-always/data.tar.gz", "connection closed after 37,500 of 50,000 bytes", "gave up after 2"]),
    "missing local file": Case("download", download(lambda ws, url: str(ws / "nowhere.tgz")),
                               ["nowhere.tgz", "no such file"]),
    "unsupported URL scheme": Case("download", download(lambda ws, url: "ftp://example.com/x.tar"),
                                   ["ftp://example.com/x.tar", "unsupported URL scheme"]),
    "folder with a symlink": Case("download", download(folder_with_symlink),
                                  ["photos/train/cat/2.png", "symbolic link"]),
    # preprocess: containers and limits
    "not an archive": Case("preprocess", raw(b"hello, I am a text file\n" * 40), [RAW, ARCHIVE_FORMATS]),
    "truncated gzip": Case("preprocess", raw(tar_bytes(binary_members())[:6000]),
                           [RAW, "data_batch_1.bin' is truncated or corrupt"]),
    "empty tar archive": Case("preprocess", raw(tar_bytes({})), [RAW, "the archive is empty"]),
    "empty zip archive": Case("preprocess", raw(zip_bytes({})), [RAW, "the archive is empty"]),
    "too many members": Case("preprocess", raw(tar_bytes(good_folder())),
                             [RAW, "more than 5 members", "max_members"], {"preprocess.limits.max_members": 5}),
    "too many bytes once uncompressed": Case(
        "preprocess", raw(tar_bytes(good_folder())), [RAW, "more than 200 bytes", "max_uncompressed_mb"],
        {"preprocess.limits.max_uncompressed_mb": 0.0002}),
    # preprocess: unsafe members
    "member named ../evil": Case("preprocess", raw(tar_bytes([member("../evil", b"x")])),
                                 [RAW, "'../evil' points outside"]),
    "member with an absolute path": Case("preprocess", raw(tar_bytes([member("/etc/evil", b"x")])),
                                         [RAW, "'/etc/evil' points outside"]),
    "zip-slip member": Case("preprocess", raw(zip_bytes({"photos/../../evil.png": png()})),
                            [RAW, "'photos/../../evil.png' points outside"]),
    "symlink member": Case("preprocess", raw(tar_bytes([member("photos/link.png", kind=SYMLINK, link="/etc")])),
                           [RAW, "'photos/link.png' is a symbolic link"]),
    "hard link member": Case("preprocess", raw(tar_bytes([member("a.png"), member("b.png", kind=HARDLINK, link="a.png")])),
                             [RAW, "'b.png' is a hard link"]),
    "device member": Case("preprocess", raw(tar_bytes([member("dev/sda", kind=DEVICE)])),
                          [RAW, "'dev/sda' is a device file"]),
    "zip symlink member": Case("preprocess", raw(zip_bytes({}, symlinks=("photos/link.png",))),
                               [RAW, "'photos/link.png' is a symbolic link"]),
    "duplicate member": Case("preprocess", raw(tar_bytes([member("p/train/c/1.png", png()), member("p/train/c/1.png")])),
                             [RAW, "'p/train/c/1.png' appears twice"]),
    "pickled archive that would run code": Case("preprocess", raw(pickled_archive),
                                                [RAW, "cifar-10-batches-py/", "pickled", "binary version"]),
    # preprocess: CIFAR binary layout
    "binary batch of the wrong size": Case(
        "preprocess", raw(tar_bytes({n: d[:-100] if "_2" in n else d for n, d in binary_members().items()})),
        [RAW, "data_batch_2.bin' is 61,360 bytes, not a whole number of 3073-byte records"]),
    "binary label out of range": Case(
        "preprocess", raw(tar_bytes(binary_members(labels_of=label_7_in_test_record_4))),
        [RAW, "test_batch.bin' record 4 has label 7, out of range for 3 classes"]),
    "binary class without training images": Case(
        "preprocess", raw(tar_bytes(binary_members(labels_of=lambda name, labels: labels % 2))),
        [RAW, "no training images of class 'bird'"]),
    "binary without batches.meta.txt": Case("preprocess", raw(tar_bytes(binary_members(meta=False))),
                                            [RAW, "without batches.meta.txt"]),
    "binary with a missing batch": Case("preprocess", raw(tar_bytes(binary_members(skip="data_batch_3.bin"))),
                                        [RAW, "without data_batch_3.bin"]),
    # preprocess: image folders
    "class folder with no images": Case(
        "preprocess", raw(tar_bytes([*(member(n, d) for n, d in folder_with(without="photos/train/bird/").items()),
                                     member("photos/train/bird", kind=DIRECTORY)])),
        [RAW, "photos/train/bird/ has no images"]),
    "corrupt JPEG": Case("preprocess", raw(tar_bytes(folder_with({"photos/train/cat/bad.jpg": jpeg()[:400]}))),
                         [RAW, "photos/train/cat/bad.jpg", "not a readable image", "runcated"]),
    "text file named .jpg": Case("preprocess", raw(tar_bytes(folder_with({"photos/test/bird/notes.jpg": b"milk\n"}))),
                                 [RAW, "photos/test/bird/notes.jpg", NOT_IMAGE]),
    "oversized image": Case(
        "preprocess", raw(tar_bytes(folder_with({"photos/train/cat/huge.png": png_header_only(10_000, 8_000)}))),
        [RAW, "photos/train/cat/huge.png: image is 10000x8000 = 80,000,000 pixels", "max_image_megapixels"]),
    "image outside a class folder": Case("preprocess", raw(tar_bytes(folder_with({"photos/train/stray.png": png()}))),
                                         [RAW, "'photos/train/stray.png' is not in a class folder"]),
    "test class without a train folder": Case("preprocess", raw(tar_bytes(folder_with({"photos/test/dog/1.png": png()}))),
                                              [RAW, "photos/test/dog/ has no matching train/dog/"]),
    "no test folder": Case("preprocess", raw(tar_bytes(folder_with(without="photos/test/"))),
                           [RAW, "no photos/test/ folder", "preprocess.test_from_train"]),
    "no dataset layout at all": Case("preprocess", raw(tar_bytes({"notes/readme.txt": b"hi"})),
                                     [RAW, "no dataset found"]),
    "bad on_bad_image param": Case("preprocess", raw(tar_bytes(good_folder())),
                                   ["params.yaml", "preprocess.on_bad_image = 'ignore'", "one of error, skip"],
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


def test_corpus_is_large_enough():
    assert len(CASES) >= 15


def prepare(name: str, server: FileServer, ws: Path) -> tuple[dict, dict]:
    """Case `name`'s workspace `ws`: its snapshot before the stage runs, and subprocess.run's arguments."""
    case = CASES[name]
    for folder in ("data/raw", "data/prepared", "metrics", ".tmp"):
        (ws / folder).mkdir(parents=True)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    unused = {"download.url": str(ws / "unused.tar.gz"), "download.checksum": None}
    for dotted, value in (unused | case.make(ws, server.url) | case.params).items():
        set_dotted(params, dotted, value)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    if case.stage == "download":
        args = [RAW]
    else:  # the outputs of an earlier, successful run: they must survive untouched
        args = [RAW, "data/prepared", "metrics/preprocess.json"]
        for output in ("train.npz", "validation.npz", "test.npz", "classes.json"):
            (ws / "data" / "prepared" / output).write_bytes(b"earlier run's " + output.encode())
        (ws / "metrics" / "preprocess.json").write_text("{}\n")
    before = snapshot(ws)

    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT),
        "TMPDIR": str(ws / ".tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = {"args": [sys.executable, "-m", f"stages.{case.stage}", *args], "cwd": ws, "env": env,
               "capture_output": True, "text": True, "timeout": 60}  # fmt: skip
    return before, command


@pytest.fixture(scope="module")
def ran(server: FileServer, tmp_path_factory) -> dict[str, tuple[Path, dict, subprocess.CompletedProcess]]:
    """Every case's stage, each in a workspace of its own, two processes at a time: {case: (workspace, its
    snapshot before, the finished process)}."""
    workspaces = {name: tmp_path_factory.mktemp("bad_input") / "ws" for name in CASES}
    prepared = {name: prepare(name, server, ws) for name, ws in workspaces.items()}
    results = run_two_at_a_time([command for _, command in prepared.values()])
    return {name: (workspaces[name], prepared[name][0], result) for name, result in zip(CASES, results)}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, ran):
    case = CASES[name]
    ws, before, result = ran[name]

    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stderr}"
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in case.expect:
        assert part in errors[0], f"{part!r} not in {errors[0]!r}"
    assert snapshot(ws) == before
