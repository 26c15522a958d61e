"""Backups shared by every route a run takes (workspace, --temp, queue): where they live, the lock that
keeps two runs of one key apart, and the cleanup of backups nothing will resume from."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classifier.training import backup_clean
from classifier.training.backup import Backup
from classifier.training.backup_lock import exclusive, is_held, locked
from classifier.training.backup_place import DEFAULT_DIR, default_dir, main_root


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A main repository with a queued run's temporary copy in it; the tests run in the main one."""
    root = tmp_path / "main"
    (root / ".dvc" / "tmp" / "exps" / "tmpab12cd" / ".dvc").mkdir(parents=True)
    (root / "stages").mkdir()
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return root


def test_every_route_finds_the_main_repository(repo: Path, tmp_path: Path) -> None:
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    assert main_root(repo, {"DVC_ROOT": str(repo)}) == repo  # workspace: DVC sets its root
    assert main_root(copy, {"DVC_ROOT": str(repo)}) == repo  # queue / --temp: DVC sets the main root
    assert main_root(copy, {}) == repo  # by hand in the copy: its place says whose copy it is
    assert main_root(repo / "stages", {}) == repo
    assert main_root(copy, {"DVC_ROOT": str(tmp_path / "elsewhere")}) == repo, "a DVC_ROOT around us only"
    assert default_dir(copy, {}) == repo / DEFAULT_DIR


def test_a_second_run_of_the_same_key_keeps_no_backups(repo: Path, capsys) -> None:
    with locked(Backup(repo / DEFAULT_DIR, "k", 0)) as first:
        with locked(Backup(repo / DEFAULT_DIR, "k", 0)) as second:
            assert first.keep and not second.keep
            assert "another run of this experiment holds" in capsys.readouterr().out
            second.save(None, 1, None)  # writes nothing (it would need a model otherwise)
            assert second.epochs() == []
        assert is_held(first.lock), "the second run leaves the first one's lock alone"
        with locked(Backup(repo / DEFAULT_DIR, "other-key", 0)) as other:
            assert other.keep, "other keys are not held up"
    assert not first.lock.exists() and not (repo / DEFAULT_DIR).exists(), "nothing left behind"


def test_the_lock_of_another_process_and_after_its_kill(repo: Path) -> None:
    lock = repo / "k-worker-0.lock"
    hold = (
        f"import fcntl, os, time; fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert is_held(lock)
        with exclusive(lock) as mine:
            assert not mine
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    assert not is_held(lock)
    with exclusive(lock) as mine:
        assert mine


def backup_of(root: Path, key: str, size: int, days_ago: float = 0) -> Path:
    folder = root / f"{key}-worker-0"
    (folder / "epoch-0003").mkdir(parents=True)
    (folder / "epoch-0003" / "model.weights.h5").write_bytes(b"w" * size)
    when = time.time() - days_ago * 86400
    os.utime(folder, (when, when))
    return folder


def test_startup_line_counts_other_runs_and_cleanup_keeps_recent_and_running_ones(repo: Path, capsys) -> None:
    root = repo / DEFAULT_DIR
    mine, recent = backup_of(root, "mine", 1000), backup_of(root, "recent", 2_000_000)
    old = backup_of(root, "old", 3_000_000, days_ago=30)
    leftover = backup_of(repo / ".dvc/tmp/exps/tmpab12cd" / DEFAULT_DIR, "leftover", 500, days_ago=30)
    line = backup_clean.startup_line(root, "mine")
    assert line == (
        "train: 5 MB of backups from 3 other runs in .dvc/tmp/train-backup "
        "(delete unused ones: python -m classifier.training.backup_clean)"
    )
    with exclusive(backup_clean.lock_of(old)):  # a train stage is running from it
        assert backup_clean.clean(root, older_than_days=7) == 500
    assert old.exists() and recent.exists() and mine.exists() and not leftover.exists()
    out = capsys.readouterr().out
    assert "kept old: a train stage is using it" in out and "deleted leftover" in out
    assert backup_clean.clean(root, older_than_days=7, dry_run=True) == 3_000_000 and old.exists()
    (root / "killed-early-worker-0.lock").touch()  # killed before its first backup
    assert backup_clean.clean(root, older_than_days=0) == 3_000_000 + 2_000_000 + 1000
    assert not (root / "killed-early-worker-0.lock").exists()
    assert not any(root.glob("*-worker-*")) and backup_clean.startup_line(root, "mine") is None
