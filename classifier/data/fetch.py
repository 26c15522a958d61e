"""Fetching the dataset archive named by download.url into one file, checksum verified.

download.url may be an http(s) or file:// URL, or a local path to an archive or to an image-folder
directory (packed here into one uncompressed tar, so DVC tracks a single file). The file is
streamed to a temporary name beside the output and renamed only once complete and verified, so a
failed or interrupted download never leaves an output behind. Nothing is unpacked or unpickled.
"""

from __future__ import annotations

import hashlib
import ssl
import sys
import tarfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import requests
import urllib3
from tqdm import tqdm

from classifier.compat import body_timeout_adapter
from classifier.core.errors import StageError
from classifier.core.files import atomic_path
from classifier.core.params_schema import DownloadParams

CHUNK = 1 << 20
USER_AGENT = "dvc-keras-cifar"
# Worth retrying: the server is busy or briefly broken, not wrong.
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class Network:
    """The download.* params that decide how long to wait and how often to retry (defaults: params.yaml)."""

    connect_timeout: float
    read_timeout: float
    retries: int
    retry_delay: float  # before the first retry; doubled after each one

    @classmethod
    def from_params(cls, download: DownloadParams) -> Network:
        return cls(download.connect_timeout, download.read_timeout, download.retries, download.retry_delay)


class Transient(Exception):
    """A failure worth retrying: timeout, refused or dropped connection, HTTP 5xx."""


def fetch(url: str, destination: Path, checksum: str | None, network: Network | None = None) -> None:
    """Write the file at `url` (http(s) with `network`) to `destination`, or raise StageError, untouched."""
    try:
        parsed = urllib.parse.urlparse(url)
    except ValueError as error:  # e.g. an unclosed [ in an IPv6 address
        raise StageError(f"{url}: {error} (download.url)") from None
    scheme = parsed.scheme
    if scheme not in ("http", "https", "file", ""):
        raise StageError(
            f"{url}: unsupported URL scheme '{scheme}' (download.url takes http, https, file or a local path)"
        )
    with atomic_path(destination) as tmp:
        if scheme in ("http", "https"):
            if network is None:
                raise ValueError(f"{url}: an http(s) download needs the download.* timeouts (network)")
            HttpDownload(url, tmp, network).run()
        else:
            source = Path(urllib.parse.unquote(parsed.path) if scheme == "file" else url)
            source = source.expanduser()
            if source.is_dir():
                pack_directory(source, tmp, destination)
            elif source.is_file():
                with open(source, "rb") as f:
                    _copy_stream(f, tmp, source.stat().st_size, source.name)
            else:
                raise StageError(f"{url}: no such file or directory (download.url)")
        if checksum is not None:
            verify_checksum(tmp, checksum, url)


# ---------------------------------------------------------------------------------------------
# HTTP (requests): timeouts, retries with backoff, and resuming with Range requests.
# ---------------------------------------------------------------------------------------------


class HttpDownload:
    def __init__(self, url: str, tmp: Path, network: Network):
        self.url, self.tmp, self.network = url, tmp, network
        # ETag or Last-Modified of the first response: a resume must not splice two versions of the file.
        self.validator: str | None = None
        # Times the headers and the body apart, and trusts the system's CA store and SSL_CERT_FILE as urllib did,
        # besides requests' own certifi bundle.
        self.session = requests.Session()
        adapter = body_timeout_adapter(network.read_timeout, ssl.create_default_context())
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, adapter)

    def run(self) -> None:
        with self.session:
            for attempt in range(self.network.retries + 1):
                try:
                    self.attempt()
                    return
                except Transient as problem:
                    if attempt == self.network.retries:
                        gave_up = f"{self.url}: {problem} (gave up after {attempt + 1} attempts)"
                        raise StageError(gave_up) from None
                    delay = self.network.retry_delay * 2**attempt
                    done = self.tmp.stat().st_size
                    resume = f", resuming at {done:,} bytes" if done else ""
                    print(f"download: {problem}; retrying in {delay:g} s{resume}", file=sys.stderr)
                    time.sleep(delay)

    def attempt(self) -> None:
        offset = self.tmp.stat().st_size
        # identity: the file's own bytes, never a compressed transfer of them (requests would accept gzip)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        try:  # connect_timeout also covers the response headers; the adapter gives the body read_timeout
            timeout = self.network.connect_timeout
            response = self.session.get(self.url, headers=headers, stream=True, timeout=timeout)
        except (OSError, ValueError, urllib3.exceptions.HTTPError) as error:  # requests' errors are OSErrors
            raise self._classify(error, "connecting") from None
        with response:
            status, reason = response.status_code, response.reason
            if status == 416 and offset:  # "range not satisfiable": start again from zero
                self.tmp.write_bytes(b"")
                raise Transient("server refused to resume (HTTP 416)")
            if status in TRANSIENT_HTTP:
                raise Transient(f"HTTP {status} {reason}")
            if not 200 <= status < 300:
                raise StageError(f"{self.url}: HTTP {status} {reason}")
            response.raw.enforce_content_length = False  # a short body is resumed below, not a read error
            total = self._prepare(response, offset)
            self._receive(response, total)

    def _prepare(self, response: requests.Response, offset: int) -> int | None:
        """Decide between appending (206) and starting over (200); return the full size if known."""
        if self.validator is None:
            self.validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if response.status_code == 206:
            span, _, total = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
            if span.partition("-")[0] == str(offset):  # Content-Range: bytes START-END/TOTAL
                return int(total) if total.isdigit() else None
        # A 200 (server ignores Range, or the file changed) or an unexpected range: restart cleanly.
        self.tmp.write_bytes(b"")
        length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None

    def _receive(self, response: requests.Response, total: int | None) -> None:
        done = self.tmp.stat().st_size
        name = Path(urllib.parse.urlparse(self.url).path).name or "download"
        with (
            open(self.tmp, "ab") as out,
            tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=name) as bar,
        ):
            while True:
                try:  # the bytes as sent: a .tar.gz labelled Content-Encoding: gzip must stay gzipped
                    chunk = response.raw.read(CHUNK, decode_content=False)
                except (OSError, urllib3.exceptions.HTTPError) as error:
                    raise self._classify(error, "reading") from None
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
        done = self.tmp.stat().st_size
        if total is not None and done != total:
            if done > total:
                self.tmp.write_bytes(b"")
            raise Transient(f"connection closed after {done:,} of {total:,} bytes")

    def _classify(self, error: Exception, doing: str) -> Exception:
        cause = _innermost(error)
        if isinstance(error, (ValueError, requests.TooManyRedirects)):  # a malformed URL or a redirect loop
            return StageError(f"{self.url}: {_describe(error)}")
        if isinstance(cause, ValueError):  # a certificate that fails to verify (ssl's error is a ValueError)
            return StageError(f"{self.url}: {_describe(cause)}")
        timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError)  # the socket's, wrapped
        if isinstance(error, timeouts) or isinstance(cause, TimeoutError):
            timeout = "connect_timeout" if doing == "connecting" else "read_timeout"
            seconds = getattr(self.network, timeout)
            waited = "no answer within" if doing == "connecting" else "no data for"
            return Transient(f"timed out {doing} ({waited} {seconds:g} s, download.{timeout})")
        return Transient(f"failed {doing} ({_describe(cause)})")


def _innermost(error: BaseException) -> BaseException:
    """The socket's, ssl's or http.client's error inside requests' and urllib3's wrappers."""
    while type(error).__module__.partition(".")[0] in ("requests", "urllib3"):
        inner = error.__cause__ if error.__suppress_context__ else error.__context__  # as tracebacks show
        if inner is None:
            break
        error = inner
    return error


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ---------------------------------------------------------------------------------------------
# Local files and folders.
# ---------------------------------------------------------------------------------------------


def _copy_stream(source: BinaryIO, tmp: Path, size: int | None, label: str) -> None:
    with (
        open(tmp, "wb") as out,
        tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=label or "copy") as bar,
    ):
        while chunk := source.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def pack_directory(source: Path, tmp: Path, destination: Path) -> None:
    """Pack a directory into a tar whose bytes depend only on file names and contents.

    Symbolic links and special files are refused rather than followed or silently dropped.
    """
    if destination.resolve().is_relative_to(source.resolve()):
        raise StageError(f"{source}: the output {destination} would be inside this folder; use another")
    paths = sorted(source.rglob("*"))
    for path in paths:
        if path.is_symlink():
            raise StageError(f"{path}: is a symbolic link; copy the file it points to instead")
        if not (path.is_file() or path.is_dir()):
            raise StageError(f"{path}: is not a regular file or folder (device, socket or FIFO)")

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as archive:
        for path in tqdm(paths, desc=f"pack {source.name}", unit="file"):
            archive.add(path, arcname=path.relative_to(source).as_posix(), recursive=False, filter=normalise)


# ---------------------------------------------------------------------------------------------
# Checksums.
# ---------------------------------------------------------------------------------------------


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, checksum: str, label: str) -> None:
    algorithm, _, expected = checksum.partition(":")
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise StageError(
            f"{label}: checksum mismatch: expected {algorithm}:{expected.lower()}, got {algorithm}:{actual} "
            "(set download.checksum to the right value, or null to skip the check)"
        )
