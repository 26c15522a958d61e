"""Reading archives and folders member by member, with every safety check before a member is read."""

from __future__ import annotations

import functools
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from classifier.core.errors import StageError

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError)


@dataclass
class Member:
    name: str  # path inside the archive, '/'-separated, checked to stay inside it
    is_dir: bool
    read: Callable[[], bytes]


def iter_members(path: Path, max_members: int, max_bytes: int) -> Iterator[Member]:
    """Yield the files and folders of an archive or directory, refusing anything unsafe.

    Links, devices, names that escape the archive and duplicate names are errors; so are more
    members or more uncompressed bytes than the limits allow (checked before reading them).
    """
    if path.is_dir():
        source, total = _directory_entries(path, path), None
    elif not path.is_file():
        raise StageError(f"{path}: no such file or directory")
    elif _starts_with(path, ZIP_MAGIC):
        source, total = _zip_entries(path), path.stat().st_size
    else:
        source, total = _tar_entries(path), path.stat().st_size
    count, size_sum, seen = 0, 0, set()
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"read {path.name}") as bar:
        for raw_name, size, is_dir, read, position in source:
            count += 1
            if count > max_members:
                raise StageError(f"{path}: more than {max_members:,} members (preprocess.limits.max_members)")
            size_sum += size
            if size_sum > max_bytes:
                raise StageError(
                    f"{path}: more than {max_bytes:,} bytes once uncompressed, at member '{raw_name}' "
                    "(preprocess.limits.max_uncompressed_mb)"
                )
            name = _checked_name(path, raw_name)
            if name in seen:
                raise StageError(f"{path}: member '{name}' appears twice; which one is meant is ambiguous")
            seen.add(name)
            if position != bar.n:
                bar.update(position - bar.n)
            yield Member(name, is_dir, read)


def _checked_name(archive: Path, name: str) -> str:
    parts = name.replace("\\", "/").split("/")
    if parts[0] == "" or ".." in parts or re.match(r"[A-Za-z]:", name):  # absolute, C:..., or ../
        raise StageError(f"{archive}: member '{name}' points outside the archive (absolute or '..'); refused")
    if "" in parts or "." in parts:  # "./a", "a//b", "dir/"
        parts = [part for part in parts if part not in ("", ".")]
    return "/".join(parts)


def _starts_with(path: Path, prefixes: tuple[bytes, ...]) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in prefixes


def _tar_entries(path: Path) -> Iterator[tuple[str, int, bool, Callable[[], bytes], int]]:
    with open(path, "rb") as raw:
        try:
            archive = tarfile.open(fileobj=raw, mode="r:*")
        except ARCHIVE_ERRORS:
            raw.seek(0)
            if raw.read(2) == b"\x1f\x8b":
                problem = "gzip data, but not a readable tar (truncated or corrupt?)"
            else:
                problem = "not a .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip archive"
            raise StageError(f"{path}: {problem}") from None
        with archive:
            members, count, position = iter(archive), 0, 0
            while True:
                try:
                    info = next(members, None)
                except ARCHIVE_ERRORS as error:
                    raise StageError(f"{path}: archive is truncated or corrupt ({_reason(error)})") from None
                if info is None:
                    return
                if not (info.isreg() or info.isdir()):
                    kind = (
                        "a symbolic link" if info.issym()
                        else "a hard link" if info.islnk()
                        else "a device file" if info.isdev()
                        else "not a regular file"
                    )  # fmt: skip
                    raise StageError(
                        f"{path}: member '{info.name}' is {kind}; only regular files and folders are accepted"
                    )
                count += 1
                if count % 256 == 0:  # for the progress bar; now and then, as tell() is a system call
                    position = raw.tell()
                content = functools.partial(_tar_read, archive, info)
                read = functools.partial(_read_member, path, info.name, content)
                yield info.name, info.size, info.isdir(), read, position


def _tar_read(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    return archive.extractfile(info).read()


def _zip_entries(path: Path) -> Iterator[tuple[str, int, bool, Callable[[], bytes], int]]:
    try:
        archive = zipfile.ZipFile(path)
    except ARCHIVE_ERRORS as error:
        raise StageError(f"{path}: not a readable zip archive ({_reason(error)})") from None
    with archive:
        position = 0
        for info in archive.infolist():
            # Unix file type bits, when the zip was made on Unix and recorded them.
            kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
            if kind == stat.S_IFLNK:
                raise StageError(f"{path}: member '{info.filename}' is a symbolic link; refused")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise StageError(f"{path}: member '{info.filename}' is a device or special file; refused")
            if info.flag_bits & 0x1:
                raise StageError(f"{path}: member '{info.filename}' is encrypted; zip it without a password")
            position += info.compress_size
            read = functools.partial(_read_member, path, info.filename, functools.partial(archive.read, info))
            yield info.filename, info.file_size, info.is_dir(), read, position


def _directory_entries(root: Path, folder: Path) -> Iterator[tuple[str, int, bool, Callable[[], bytes], int]]:
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        name = path.relative_to(root).as_posix()
        if entry.is_symlink():
            raise StageError(f"{path}: is a symbolic link; only regular files and folders are accepted")
        if entry.is_dir(follow_symlinks=False):
            yield name, 0, True, lambda: b"", 0
            yield from _directory_entries(root, path)
        elif entry.is_file(follow_symlinks=False):
            size = entry.stat(follow_symlinks=False).st_size
            yield name, size, False, path.read_bytes, 0
        else:
            raise StageError(f"{path}: is a device or special file; only regular files and folders are read")


def _read_member(archive: Path, name: str, read: Callable[[], bytes]) -> bytes:
    try:
        return read()
    except ARCHIVE_ERRORS as error:
        raise StageError(f"{archive}: member '{name}' is truncated or corrupt ({_reason(error)})") from None


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
