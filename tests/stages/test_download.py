"""The download stage command, `python -m stages.download`, against a local HTTP server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT
from local_http import FileServer, file_server

PAYLOAD = os.urandom(300_000)
PAYLOAD_CHECKSUM = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(scope="module")
def server() -> FileServer:
    with file_server() as server:
        yield server


def run_stage(tmp_path: Path, **download: object) -> subprocess.CompletedProcess:
    """Run the stage in tmp_path with the project's params.yaml, download.* overridden."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["download"].update(download)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-m", "stages.download", "data/raw/dataset.archive"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_stage_resumes_a_dropped_download_end_to_end(server: FileServer, tmp_path: Path):
    """`python -m stages.download` with retries from params: the drop is retried and the output is whole."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["download"].update(
        url=f"{server.url}/drop-once/stage.tar.gz", checksum=PAYLOAD_CHECKSUM,
        connect_timeout=1, read_timeout=1, retries=2, retry_delay=0.01,
    )  # fmt: skip
    server.files["stage.tar.gz"] = PAYLOAD
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "stages.download", "data/raw/dataset.archive"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "resuming at 150,000 bytes" in result.stderr
    assert (tmp_path / "data" / "raw" / "dataset.archive").read_bytes() == PAYLOAD


def test_stage_prints_the_retry_lines_and_nothing_from_the_http_library(server: FileServer, tmp_path: Path):
    server.files["busy.tar.gz"] = PAYLOAD
    url = f"{server.url}/busy-once/busy.tar.gz"
    result = run_stage(tmp_path, url=url, checksum=PAYLOAD_CHECKSUM, retries=2, retry_delay=0.01)
    assert result.returncode == 0, result.stderr
    assert "download: HTTP 503 Service Unavailable; retrying in 0.01 s\n" in result.stderr
    assert "warning" not in result.stderr.lower() and "urllib3" not in result.stderr
    assert f"download: {url} -> data/raw/dataset.archive (300,000 bytes)" in result.stdout


def test_stage_reports_an_http_error_in_one_line(server: FileServer, tmp_path: Path):
    url = f"{server.url}/ok/missing.tar.gz"
    result = run_stage(tmp_path, url=url, checksum=None, retries=2, retry_delay=0.01)
    assert result.returncode == 1
    assert result.stderr == f"error: {url}: HTTP 404 Not Found\n"  # no traceback, no warning, no retry
    assert not (tmp_path / "data" / "raw").exists() or not any((tmp_path / "data" / "raw").iterdir())


def test_stage_reports_a_stalled_server_in_one_line(server: FileServer, tmp_path: Path):
    url = f"{server.url}/stall-headers/x.tar.gz"
    result = run_stage(tmp_path, url=url, checksum=None, connect_timeout=0.3, read_timeout=5, retries=0)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {url}: timed out connecting (no answer within 0.3 s, download.connect_timeout)"
        " (gave up after 1 attempts)\n"
    )
