"""classifier.data.fetch: local files and folders, HTTP with timeouts, retries and resume, checksums."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tarfile
import time
import warnings
from pathlib import Path

import pytest

from classifier.core.errors import StageError
from classifier.data.fetch import CHUNK, HttpDownload, Network, fetch, pack_directory

from local_http import FileServer, file_server, refused_url, self_signed_tls, unanswered_url

# Short waits so that timeouts and retries cost tests well under a second each.
FAST = Network(connect_timeout=0.5, read_timeout=0.5, retries=2, retry_delay=0.01)
PAYLOAD = os.urandom(300_000)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def server() -> FileServer:
    with file_server() as server:
        server.files["data.tar.gz"] = PAYLOAD
        yield server


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- local sources


def test_local_path_and_file_url_copy_the_bytes(tmp_path: Path):
    source = tmp_path / "in.tar.gz"
    source.write_bytes(PAYLOAD)
    fetch(str(source), tmp_path / "out" / "a", sha256(PAYLOAD))
    fetch(source.as_uri(), tmp_path / "out" / "b", "md5:" + hashlib.md5(PAYLOAD).hexdigest())
    assert (tmp_path / "out" / "a").read_bytes() == PAYLOAD
    assert (tmp_path / "out" / "b").read_bytes() == PAYLOAD
    assert leftovers(tmp_path / "out") == ["a", "b"]  # no temporary files left beside the outputs


def test_checksum_mismatch_shows_both_digests_and_keeps_the_old_output(tmp_path: Path):
    source = tmp_path / "in.bin"
    source.write_bytes(PAYLOAD)
    output = tmp_path / "out" / "dataset.archive"
    output.parent.mkdir()
    output.write_bytes(b"previous download")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(StageError, match=f"checksum mismatch: expected {wrong}, got {sha256(PAYLOAD)}"):
        fetch(str(source), output, wrong)
    assert output.read_bytes() == b"previous download"
    assert leftovers(output.parent) == ["dataset.archive"]


def test_a_directory_is_packed_into_a_reproducible_tar(tmp_path: Path):
    folder = tmp_path / "photos"
    (folder / "train" / "cat").mkdir(parents=True)
    (folder / "train" / "cat" / "1.jpg").write_bytes(b"one")
    (folder / "train" / "cat" / "2.jpg").write_bytes(b"two")
    fetch(str(folder), tmp_path / "a.tar", None)
    os.utime(folder / "train" / "cat" / "1.jpg", (0, 12345))  # only names and contents count
    fetch(str(folder), tmp_path / "b.tar", None)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as archive:
        assert archive.getnames() == ["train", "train/cat", "train/cat/1.jpg", "train/cat/2.jpg"]
        assert archive.extractfile("train/cat/2.jpg").read() == b"two"


def test_packing_refuses_symlinks_and_an_output_inside_the_folder(tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "link.jpg").symlink_to("/etc/passwd")
    with pytest.raises(StageError, match=r"link\.jpg: is a symbolic link"):
        pack_directory(folder, tmp_path / "x.tar", tmp_path / "x.tar")
    (folder / "link.jpg").unlink()
    with pytest.raises(StageError, match="would be inside this folder"):
        fetch(str(folder), folder / "out.tar", None)


def test_missing_source_and_unknown_scheme(tmp_path: Path):
    with pytest.raises(StageError, match=r"nope\.tar: no such file or directory"):
        fetch(str(tmp_path / "nope.tar"), tmp_path / "out", None)
    with pytest.raises(StageError, match="unsupported URL scheme 'ftp'"):
        fetch("ftp://example.com/x.tar", tmp_path / "out", None)
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- HTTP


def test_http_download_with_checksum(server: FileServer, tmp_path: Path):
    fetch(f"{server.url}/ok/data.tar.gz", tmp_path / "out", sha256(PAYLOAD), FAST)
    fetch(f"{server.url}/norange/data.tar.gz", tmp_path / "out2", sha256(PAYLOAD), FAST)
    assert (tmp_path / "out").read_bytes() == PAYLOAD == (tmp_path / "out2").read_bytes()
    assert leftovers(tmp_path) == ["out", "out2"]


def test_dropped_connection_is_resumed_with_a_range_request(server: FileServer, tmp_path: Path):
    fetch(f"{server.url}/drop-once/data.tar.gz", tmp_path / "out", sha256(PAYLOAD), FAST)
    assert (tmp_path / "out").read_bytes() == PAYLOAD
    ranges = server.seen("/drop-once/data.tar.gz")
    assert ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_range_ignored_by_server_gives_the_right_bytes(tmp_path: Path):
    from classifier.data.fetch import HttpDownload

    with file_server() as server:
        server.files["data.tar.gz"] = PAYLOAD
        tmp = tmp_path / "partial"
        tmp.write_bytes(PAYLOAD[:1000])  # as if an earlier attempt had dropped after 1000 bytes
        HttpDownload(f"{server.url}/norange/data.tar.gz", tmp, FAST).run()
        assert server.seen("/norange/data.tar.gz") == ["bytes=1000-"]
    assert tmp.read_bytes() == PAYLOAD  # restarted from zero, not appended


def test_busy_server_is_retried(server: FileServer, tmp_path: Path):
    fetch(f"{server.url}/busy-once/data.tar.gz", tmp_path / "out", sha256(PAYLOAD), FAST)
    assert (tmp_path / "out").read_bytes() == PAYLOAD
    assert len(server.seen("/busy-once/data.tar.gz")) == 2


def test_404_fails_at_once_without_retrying(server: FileServer, tmp_path: Path):
    url = f"{server.url}/ok/missing.tar.gz"
    with pytest.raises(StageError, match=f"{url}: HTTP 404 Not Found"):
        fetch(url, tmp_path / "out", None, FAST)
    assert len(server.seen("/ok/missing.tar.gz")) == 1
    assert leftovers(tmp_path) == []


def test_stalled_body_times_out_after_the_retries(server: FileServer, tmp_path: Path):
    url = f"{server.url}/stall-body/data.tar.gz"
    started = time.monotonic()
    with pytest.raises(
        StageError, match=r"timed out reading .*download\.read_timeout.*gave up after 3 attempts"
    ):
        fetch(url, tmp_path / "out", None, FAST)
    assert time.monotonic() - started < 10
    assert leftovers(tmp_path) == []


def test_connect_and_read_timeouts_are_separate(server: FileServer, tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(StageError, match="timed out reading"):
        fetch(f"{server.url}/stall-body/data.tar.gz", tmp_path / "out", None, Network(20, 0.3, 0, 0.0))
    with pytest.raises(StageError, match="timed out connecting"):
        fetch(f"{server.url}/stall-headers/x", tmp_path / "out", None, Network(0.3, 20, 0, 0.0))
    assert time.monotonic() - started < 5  # neither waited for the other, longer timeout


def test_server_that_never_answers_times_out(server: FileServer, tmp_path: Path):
    with pytest.raises(StageError, match=r"timed out connecting .*download\.connect_timeout"):
        fetch(f"{server.url}/stall-headers/x", tmp_path / "out", None, Network(0.3, 0.3, 0, 0.0))


def test_connection_refused_is_retried_then_reported(tmp_path: Path):
    url = refused_url()
    with pytest.raises(StageError, match=f"{url}: failed connecting .*refused.*gave up after 3 attempts"):
        fetch(url, tmp_path / "out", None, FAST)
    assert leftovers(tmp_path) == []


def test_connection_dropped_every_time_is_an_error(server: FileServer, tmp_path: Path):
    with pytest.raises(
        StageError, match=r"connection closed after [\d,]+ of 300,000 bytes .*gave up after 3"
    ):
        fetch(f"{server.url}/drop-always/data.tar.gz", tmp_path / "out", None, FAST)
    assert leftovers(tmp_path) == []
    ranges = server.seen("/drop-always/data.tar.gz")
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])


# ----------------------------------------------------------------------------- HTTP: what must not change


def test_a_gzip_content_encoding_is_not_undone(server: FileServer, tmp_path: Path):
    """A .tar.gz served with Content-Encoding: gzip (a common server setting) arrives as the served bytes."""
    archive = gzip.compress(PAYLOAD)
    server.files["encoded.tar.gz"] = archive
    fetch(f"{server.url}/gzip-encoded/encoded.tar.gz", tmp_path / "out", sha256(archive), FAST)
    assert (tmp_path / "out").read_bytes() == archive


def test_the_server_is_asked_not_to_compress_the_transfer(server: FileServer, tmp_path: Path):
    fetch(f"{server.url}/gzip-if-asked/data.tar.gz", tmp_path / "out", sha256(PAYLOAD), FAST)
    assert (tmp_path / "out").read_bytes() == PAYLOAD
    assert server.seen("/gzip-if-asked/data.tar.gz", "Accept-Encoding") == ["identity"]


def test_a_body_of_several_chunks_arrives_whole(server: FileServer, tmp_path: Path):
    big = os.urandom(2 * CHUNK + 12345)
    server.files["big.tar"] = big
    fetch(f"{server.url}/ok/big.tar", tmp_path / "out", sha256(big), FAST)
    assert (tmp_path / "out").read_bytes() == big


def test_a_read_timeout_mid_body_resumes_with_a_range_request(server: FileServer, tmp_path: Path, capsys):
    """The server stalls after 1.25 MiB: the first 1 MiB chunk is kept, the part-read one fetched again."""
    big = os.urandom(2 * CHUNK + CHUNK // 2)
    server.files["stall.tar.gz"] = big
    fetch(f"{server.url}/stall-once/stall.tar.gz", tmp_path / "out", sha256(big), FAST)
    assert (tmp_path / "out").read_bytes() == big
    assert server.seen("/stall-once/stall.tar.gz") == [None, f"bytes={CHUNK}-"]
    stderr = capsys.readouterr().err
    assert "download: timed out reading (no data for 0.5 s, download.read_timeout); retrying in 0.01 s," \
           " resuming at 1,048,576 bytes\n" in stderr  # fmt: skip


def test_a_resume_names_the_etag_of_the_first_response(server: FileServer, tmp_path: Path):
    server.files["etag.tar.gz"] = PAYLOAD
    fetch(f"{server.url}/drop-once/etag.tar.gz", tmp_path / "out", sha256(PAYLOAD), FAST)
    etag = '"' + hashlib.md5(PAYLOAD).hexdigest() + '"'
    assert server.seen("/drop-once/etag.tar.gz", "If-Range") == [None, etag]
    assert server.seen("/drop-once/etag.tar.gz", "User-Agent") == ["dvc-keras-cifar"] * 2


def partial_download(tmp_path: Path, data: bytes) -> Path:
    """A temporary file as if an earlier attempt had dropped after len(data) bytes."""
    tmp = tmp_path / "partial"
    tmp.write_bytes(data)
    return tmp


def test_http_416_restarts_from_zero(tmp_path: Path, capsys):
    with file_server() as server:
        server.files["data.tar.gz"] = PAYLOAD
        tmp = partial_download(tmp_path, PAYLOAD[:1000])
        HttpDownload(f"{server.url}/range-416/data.tar.gz", tmp, FAST).run()
        assert server.seen("/range-416/data.tar.gz") == ["bytes=1000-", None]
    assert tmp.read_bytes() == PAYLOAD
    assert "download: server refused to resume (HTTP 416); retrying in 0.01 s\n" in capsys.readouterr().err


def test_a_206_for_another_range_restarts_cleanly(tmp_path: Path):
    with file_server() as server:
        server.files["data.tar.gz"] = PAYLOAD
        tmp = partial_download(tmp_path, b"x" * 1000)
        HttpDownload(f"{server.url}/wrong-range/data.tar.gz", tmp, FAST).run()
        assert server.seen("/wrong-range/data.tar.gz") == ["bytes=1000-"]
    assert tmp.read_bytes() == PAYLOAD  # the partial bytes were dropped, not kept in front


def test_a_body_longer_than_announced_restarts(tmp_path: Path):
    with file_server() as server:
        server.files["data.tar.gz"] = PAYLOAD
        tmp = partial_download(tmp_path, b"x" * 1000)
        HttpDownload(f"{server.url}/overlong/data.tar.gz", tmp, FAST).run()
        assert server.seen("/overlong/data.tar.gz") == ["bytes=1000-", None]
    assert tmp.read_bytes() == PAYLOAD


def test_retry_lines_double_the_delay_each_time(server: FileServer, tmp_path: Path, capsys):
    url = f"{server.url}/drop-always/data.tar.gz"
    with pytest.raises(StageError) as failure:
        fetch(url, tmp_path / "out", None, FAST)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("download:")]
    assert lines == [
        "download: connection closed after 150,000 of 300,000 bytes; retrying in 0.01 s, resuming at 150,000 bytes",
        "download: connection closed after 225,000 of 300,000 bytes; retrying in 0.02 s, resuming at 225,000 bytes",
    ]  # fmt: skip
    gave_up = "connection closed after 262,500 of 300,000 bytes (gave up after 3 attempts)"
    assert str(failure.value) == f"{url}: {gave_up}"


def test_every_transient_status_is_retried_then_reported(server: FileServer, tmp_path: Path, capsys):
    with pytest.raises(StageError, match=r"/busy-once/missing: HTTP 404 Not Found$"):
        fetch(f"{server.url}/busy-once/missing", tmp_path / "out", None, FAST)  # 404 first: not retried
    assert capsys.readouterr().err == ""
    server.files["busy.tar.gz"] = PAYLOAD
    fetch(f"{server.url}/busy-once/busy.tar.gz", tmp_path / "out", sha256(PAYLOAD), FAST)
    assert "download: HTTP 503 Service Unavailable; retrying in 0.01 s\n" in capsys.readouterr().err


def test_redirects_are_followed(server: FileServer, tmp_path: Path):
    fetch(f"{server.url}/redirect/ok/data.tar.gz", tmp_path / "out", sha256(PAYLOAD), FAST)
    assert (tmp_path / "out").read_bytes() == PAYLOAD
    with pytest.raises(StageError, match="/loop/x: TooManyRedirects"):
        fetch(f"{server.url}/loop/x", tmp_path / "out2", None, FAST)
    assert len(server.seen("/loop/x")) < 40  # one chain of redirects, not retried


@pytest.mark.parametrize("url", ["http://", "http:///data.tar.gz", "http://127.0.0.1:abc/x", "http://[::1/x"])
def test_a_malformed_url_fails_at_once_in_one_line(url: str, tmp_path: Path, capsys):
    with pytest.raises(StageError) as failure:
        fetch(url, tmp_path / "out", None, FAST)
    assert str(failure.value).startswith(f"{url}: ") and "\n" not in str(failure.value)
    assert "retrying" not in capsys.readouterr().err
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux drops SYNs to a full accept queue")
def test_a_connection_never_accepted_times_out_connecting(tmp_path: Path):
    started = time.monotonic()
    with unanswered_url() as url:
        expected = r"timed out connecting \(no answer within 0.3 s, download\.connect_timeout\)"
        with pytest.raises(StageError, match=expected):
            fetch(url, tmp_path / "out", None, Network(0.3, 20, 1, 0.0))
    assert time.monotonic() - started < 5


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("cryptography")
    return tmp_path_factory.mktemp("tls")


def test_an_untrusted_certificate_fails_at_once(tls_files: Path, tmp_path: Path, capsys):
    context, _ = self_signed_tls(tls_files)
    with file_server(context) as server:
        server.files["data.tar.gz"] = PAYLOAD
        expected = r"/ok/data.tar.gz: SSLCertVerificationError: .*certificate verify failed"
        with pytest.raises(StageError, match=expected):
            fetch(f"{server.url}/ok/data.tar.gz", tmp_path / "out", None, FAST)
    assert "retrying" not in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_https_trusts_the_system_certificate_store(tls_files: Path, tmp_path: Path, monkeypatch):
    """As with urllib, SSL_CERT_FILE (OpenSSL's store) is trusted, not only requests' certifi bundle."""
    context, certificate = self_signed_tls(tls_files)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    with file_server(context) as server, warnings.catch_warnings():
        warnings.simplefilter("error")  # no InsecureRequestWarning or any other
        server.files["data.tar.gz"] = PAYLOAD
        fetch(f"{server.url}/drop-once/data.tar.gz", tmp_path / "out", sha256(PAYLOAD), FAST)
        assert server.seen("/drop-once/data.tar.gz") == [None, "bytes=150000-"]
    assert (tmp_path / "out").read_bytes() == PAYLOAD
    monkeypatch.setenv("SSL_CERT_FILE", str(self_signed_tls(tls_files, "localhost")[1]))
    with file_server(self_signed_tls(tls_files, "localhost")[0]) as server:  # trusted, but for another name
        with pytest.raises(StageError, match="certificate verify failed: IP address mismatch"):
            fetch(f"{server.url}/ok/data.tar.gz", tmp_path / "out2", None, FAST)
