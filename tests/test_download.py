"""The download stage: local files and folders, HTTP with timeouts, retries and resume, checksums."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from local_http import FileServer, file_server, refused_url

from conftest import PROJECT
from classifier.errors import StageError
from classifier.fetch import Network, fetch, pack_directory

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
    from classifier.fetch import HttpDownload

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
    with pytest.raises(StageError, match=r"timed out reading .*download\.read_timeout.*gave up after 3 attempts"):
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
    with pytest.raises(StageError, match=r"connection closed after [\d,]+ of 300,000 bytes .*gave up after 3"):
        fetch(f"{server.url}/drop-always/data.tar.gz", tmp_path / "out", None, FAST)
    assert leftovers(tmp_path) == []
    ranges = server.seen("/drop-always/data.tar.gz")
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])


def test_stage_resumes_a_dropped_download_end_to_end(server: FileServer, tmp_path: Path):
    """`python -m stages.download` with retries from params: the drop is retried and the output is whole."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["download"].update(
        url=f"{server.url}/drop-once/stage.tar.gz", checksum=sha256(PAYLOAD),
        connect_timeout=1, read_timeout=1, retries=2, retry_delay=0.01,
    )  # fmt: skip
    server.files["stage.tar.gz"] = PAYLOAD
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "stages.download", "data/raw/dataset.archive"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "resuming at 150,000 bytes" in result.stderr
    assert (tmp_path / "data" / "raw" / "dataset.archive").read_bytes() == PAYLOAD
