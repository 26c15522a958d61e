"""Backups of runs that never finished: the line the train stage prints about them when it starts, and
the command that deletes them.

A run that finishes deletes its own backups. One that was killed and never runs again leaves them: its
queued experiment was removed (`dvc queue remove`, `dvc exp remove`), or its params or inputs changed
since. DVC has no hook for those commands, and cannot say which run key a queued experiment will have
(the key hashes the bytes of inputs that the stages before train make), so age stands in for "nothing
will resume from it": backups written to in the last DAYS days (default 7) are kept, as a queued or
just-failed run may resume from them, and those of a running train (its lock held) always are.

Usage: python -m classifier.training.backup_clean [--older-than DAYS] [--dry-run] [--backup-dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from classifier.training.backup_lock import exclusive, is_held
from classifier.training.backup_place import copies_dirs, default_dir, main_root

COMMAND = "python -m classifier.training.backup_clean"
KEEP_DAYS = 7.0


@dataclass
class Run:
    """The backups of one run key: one folder per worker."""

    key: str
    folders: list[Path] = field(default_factory=list)
    size: int = 0
    written: float = 0.0  # when a backup was last written (or dropped), seconds since the epoch


def lock_of(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}.lock")


def find_runs(roots: list[Path]) -> dict[str, Run]:
    runs: dict[str, Run] = {}
    for root in roots:
        for folder in sorted(root.glob("*-worker-*")):
            if not folder.is_dir():
                continue
            key = folder.name.rsplit("-worker-", 1)[0]
            run = runs.setdefault(key, Run(key))
            run.folders.append(folder)
            run.size += sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
            run.written = max(run.written, folder.stat().st_mtime)
    return runs


def backup_roots(root: Path) -> list[Path]:
    """`root`, and the backup folders that earlier versions of the stage left in temporary copies."""
    return [root, *copies_dirs(main_root())]


def describe_size(size: int) -> str:
    for unit in ("bytes", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def shown(path: Path) -> str:
    """`path` relative to the main repository when it is inside it: the same in every temporary copy."""
    root = main_root()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def startup_line(root: Path, key: str) -> str | None:
    """One line about the space other runs' backups take, for the train stage to print; None if none."""
    others = [run for run in find_runs(backup_roots(root.resolve())).values() if run.key != key]
    if not others:
        return None
    size = describe_size(sum(run.size for run in others))
    runs = f"{len(others)} other run{'s' if len(others) > 1 else ''}"
    return f"train: {size} of backups from {runs} in {shown(root.resolve())} (delete unused ones: {COMMAND})"


def delete_leftovers(key: str) -> None:
    """Delete `key`'s backups left in temporary copies by earlier versions of the stage."""
    for root in copies_dirs(main_root()):
        for folder in root.glob(f"{key}-worker-*"):
            shutil.rmtree(folder, ignore_errors=True)


def clean(root: Path, older_than_days: float = KEEP_DAYS, dry_run: bool = False) -> int:
    """Delete the backups nothing will resume from (module docstring), one line each; return bytes freed."""
    cutoff, freed = time.time() - older_than_days * 86400, 0
    for run in find_runs(backup_roots(root.resolve())).values():
        age = f"last written {(time.time() - run.written) / 86400:.1f} days ago"
        if any(is_held(lock_of(folder)) for folder in run.folders):
            print(f"kept {run.key}: a train stage is using it")
        elif run.written > cutoff:
            print(f"kept {run.key}: {describe_size(run.size)}, {age} (--older-than {older_than_days:g})")
        else:
            for folder in run.folders if not dry_run else []:
                with exclusive(lock_of(folder)) as mine:  # a run that started meanwhile keeps its backup
                    if mine:
                        shutil.rmtree(folder)
            print(f"{'would delete' if dry_run else 'deleted'} {run.key}: {describe_size(run.size)}, {age}")
            freed += run.size
    for lock in [] if dry_run else root.glob("*-worker-*.lock"):  # of runs killed before their first backup
        if not lock.with_suffix("").exists():
            with exclusive(lock):  # deleted on release unless a run holds it
                pass
    return freed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--older-than", type=float, default=KEEP_DAYS, metavar="DAYS",
                        help=f"delete backups last written more than DAYS days ago (default {KEEP_DAYS:g}; 0: all)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    parser.add_argument(
        "--backup-dir", type=Path, help="default: the main repository's .dvc/tmp/train-backup"
    )
    args = parser.parse_args()
    root = args.backup_dir or default_dir()
    freed = clean(root, args.older_than, args.dry_run)
    print(
        f"{describe_size(freed)} {'would be freed' if args.dry_run else 'freed'} in {shown(root.resolve())}"
    )


if __name__ == "__main__":
    main()
