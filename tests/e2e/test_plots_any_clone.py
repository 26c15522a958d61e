"""Plain `dvc plots show` in a fresh clone where nothing was built or run: only the files git tracks (as a
clone after `pip install -r requirements.lock`, or after `git clean -fdx`, has them), no make, no network.
The page it writes draws its plots in headless Chromium."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_plots_page import chromium, render  # noqa: F401  (chromium is a fixture)

from conftest import PROJECT, sh, write_history

pytestmark = pytest.mark.e2e


def tracked_files_only(where: Path) -> Path:
    """A copy of what git tracks in the project (its working-tree bytes), committed in a new repo."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=PROJECT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, names):
        source = PROJECT / name.decode()
        if source.is_file():
            target = where / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    sh(where, "git", "init", "-q", "-b", "main")
    sh(where, "git", "add", "-A")
    sh(where, "git", "commit", "-qm", "clone")
    return where


def test_the_committed_template_is_the_build_of_the_vendored_scripts():
    # --check rebuilds it in memory (each script checked against SHA256SUMS) and compares byte for byte.
    check = [sys.executable, "plots_page/build_template.py", "--check"]
    result = subprocess.run(check, check=False, cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (
        PROJECT / "plots_page/offline-template.html"
    ).stat().st_size < 1 << 20  # git takes no file over 1 MiB


def test_plots_show_in_a_fresh_clone_draws_offline(tmp_path, chromium):  # noqa: F811
    repo = tracked_files_only(tmp_path / "clone")
    assert not (repo / "plots_page" / "build").exists()
    write_history(
        repo / "metrics" / "train", {"train": {"loss": [1.0, 0.7, 0.5]}, "eval": {"loss": [1.1, 0.9, 0.8]}}
    )
    written = sh(repo, "dvc", "plots", "show").stdout.strip()
    page = repo / "dvc_plots" / "index.html"
    assert written == page.as_uri()
    assert re.search(r"<script[^>]*\ssrc\s*=", page.read_text()) is None, "a script loads from the network"
    report = render(chromium, page, tmp_path / "profile")
    assert report["errors"] == [], report["errors"]
    drawn = report["plots"]["Loss_per_epoch"]
    assert drawn["element"] in ("CANVAS", "svg") and drawn["width"] > 100, drawn
