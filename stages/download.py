"""Stage 1: fetch the dataset archive named by download.url into one file, checksum verified.

download.url may be an http(s) or file:// URL, or a local path to an archive or to an image-folder
directory (packed here into one uncompressed tar, so DVC tracks a single file). Nothing is unpacked
or unpickled.
"""

from __future__ import annotations

import argparse
import hashlib
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from stages.common import StageError, atomic_path, load_params, run

CHUNK = 1 << 20
TIMEOUT_SECONDS = 30


def fetch(url: str, destination: Path, checksum: str | None) -> None:
    """Write the archive at `url` to `destination`, or raise StageError and leave it untouched."""
    with atomic_path(destination) as tmp:
        scheme = urllib.parse.urlparse(url).scheme
        if scheme in ("http", "https"):
            _download(url, tmp)
        else:
            source = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path) if scheme == "file" else url)
            if source.is_dir():
                pack_directory(source, tmp)
            elif source.is_file():
                _copy(source, tmp)
            else:
                raise StageError(f"{url}: no such file or directory (download.url)")
        if checksum is not None:
            verify_checksum(tmp, checksum, url)


def _download(url: str, tmp: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "dvc-keras-cifar"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            _stream(response, tmp, size, url)
    except urllib.error.HTTPError as error:
        raise StageError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise StageError(f"{url}: download failed ({reason})") from None


def _copy(source: Path, tmp: Path) -> None:
    with open(source, "rb") as f:
        _stream(f, tmp, source.stat().st_size, str(source))


def _stream(source, tmp: Path, size: int | None, label: str) -> None:
    with open(tmp, "wb") as out, tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=Path(label).name or "download"
    ) as bar:
        while chunk := source.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))
    if size is not None and tmp.stat().st_size != size:
        raise StageError(f"{label}: got {tmp.stat().st_size} of {size} bytes (connection dropped?)")


def pack_directory(source: Path, tmp: Path) -> None:
    """Pack a directory into a tar whose bytes depend only on file names and contents."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as archive:
        for path in tqdm(sorted(source.rglob("*")), desc=f"pack {source.name}", unit="file"):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            archive.add(path, arcname=path.relative_to(source).as_posix(), recursive=False, filter=normalise)


def verify_checksum(path: Path, checksum: str, label: str) -> None:
    algorithm, _, expected = checksum.partition(":")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise StageError(
            f"{label}: checksum mismatch: expected {algorithm}:{expected.lower()}, got {algorithm}:{actual} "
            "(set download.checksum to the right value, or null to skip the check)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the single file to write, e.g. data/raw/dataset.archive")
    args = parser.parse_args()
    settings = load_params()["download"]
    fetch(settings["url"], args.output, settings["checksum"])
    print(f"download: {settings['url']} -> {args.output}")


if __name__ == "__main__":
    run(main)
