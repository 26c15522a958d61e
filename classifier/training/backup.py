"""Resume an interrupted train stage from its last completed epoch.

After every epoch the train stage leaves a backup outside DVC's outputs (default: the main repository's
`.dvc/tmp/train-backup`, which git and DVC ignore, wherever the stage runs: backup_place.py):
`<run key>-worker-<i>/epoch-0007/` holds the weights and optimizer state after
7 epochs and, on the worker that writes the metrics, a copy of the DVCLive folder at that moment. DVC
deletes a stage's outputs before it reruns the stage, so the DVCLive history must come back from the
backup too. The run key is a hash of the params and input files the stage reads: a backup is only ever
used by the run that made it (by whichever route it runs again: workspace, --temp or queue). One run at a
time uses a key's backups (backup_lock.py). A run that finishes deletes its backup; backups of runs that
never finished are listed when the stage starts and deleted by `python -m classifier.training.backup_clean`.

A backup is whole when, and only when, its `manifest.json` (each file's path, size and sha256; written
last) says so. It is written as `epoch-NNNN.tmp`, flushed to the disk with its folders and renamed into
place, so a kill or a power loss at any instant leaves the previous backup whole. A resumed run drops,
with one warning each, the backups that fail their manifest or whose weights Keras cannot load, and
resumes from the last whole one. The backup is put together in memory first: its exact size is checked
against the free space before anything is written, and a full disk is one DiskFull error, never h5py
failing mid-file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from classifier.core.errors import StageError, disk_full_message, is_disk_full
from classifier.core.files import DiskFull, check_free_space, free_bytes, fsync_path
from classifier.core.params_schema import TrainParams
from classifier.training import distribute
from classifier.training.backup_place import DEFAULT_DIR

__all__ = ["DEFAULT_DIR", "Backup", "resume", "run_key"]
KEEP = 2  # workers killed a moment apart may hold backups one epoch apart: keep the previous one too
WEIGHTS, STATE, MANIFEST = "model.weights.h5", "state.npz", "manifest.json"
BLOCK = 4096  # the least a file or folder takes on most filesystems: the free-space check counts blocks


def run_key(seed: int, train: TrainParams, inputs: list[Path]) -> str:
    """What makes a run: the seed, every train param and the bytes of every input file. The params are
    hashed as the file wrote them (params_schema keeps `0` an int), so a key never changes for the same file."""
    digest = hashlib.sha256(json.dumps([seed, train.model_dump()], sort_keys=True).encode())
    for path in inputs:
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


class _WeightsBuffer(io.BytesIO):
    """Where Keras' save_weights writes the weights file in memory (it checks that the name it is given
    ends in `.weights.h5`), so that a full disk fails our plain write, not h5py mid-file."""

    def __str__(self) -> str:
        return WEIGHTS


def backup_files(model: Any, metrics_dir: Path | None, state: dict[str, Any] | None) -> dict[str, bytes]:
    """The files of a backup, in memory, by path relative to its folder."""
    weights = _WeightsBuffer()
    model.save_weights(weights)  # weights and optimizer state
    files = {WEIGHTS: weights.getvalue()}
    if state:
        arrays = io.BytesIO()
        np.savez(arrays, **state)
        files[STATE] = arrays.getvalue()
    if metrics_dir is not None:
        for path in sorted(Path(metrics_dir).rglob("*")):
            if path.is_file():
                files[f"metrics/{path.relative_to(metrics_dir).as_posix()}"] = path.read_bytes()
    return files


def manifest(epoch: int, files: dict[str, bytes]) -> bytes:
    entries = [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in files.items()]
    return (json.dumps({"epoch": epoch, "files": entries}, indent=1) + "\n").encode()


def damage(folder: Path, epoch: int) -> str | None:
    """Why the backup in `folder` is not whole; None when every file its manifest lists is there, intact."""
    try:
        listed = json.loads((folder / MANIFEST).read_bytes())
        entries = [(str(e["path"]), int(e["size"]), str(e["sha256"])) for e in listed["files"]]
        if listed["epoch"] != epoch or WEIGHTS not in [path for path, _, _ in entries]:
            raise ValueError
    except FileNotFoundError:
        return f"{MANIFEST} is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is garbled"
    for path, size, digest in entries:
        if not (folder / path).is_file():
            return f"{path} is missing"
        actual = (folder / path).stat().st_size
        if actual < size:
            return f"{path} is truncated to {actual:,} of {size:,} bytes"
        if actual > size:
            return f"{path} has {actual:,} bytes, not {size:,}"
        with open(folder / path, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                return f"{path} does not match its sha256"
    return None


def write_flushed(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Backup:
    """The backups of one worker of one run: `root/<key>-worker-<worker>/epoch-NNNN/`, locked by
    `root/<key>-worker-<worker>.lock`. With keep=False (another run holds the lock) it reads and writes
    nothing: the run starts afresh and keeps no backups."""

    def __init__(self, root: Path, key: str, worker: int = 0, keep: bool = True):
        self.key = key
        self.suffix = f"-worker-{worker}"
        self.root = Path(root)
        self.dir = self.root / f"{key}{self.suffix}"
        self.lock = self.root / f"{key}{self.suffix}.lock"
        self.keep = keep

    def epochs(self) -> list[int]:
        """Completed epochs with a backup, oldest first (drop_damaged() drops those not whole)."""
        if not self.keep or not self.dir.is_dir():
            return []
        numbers = [p.name.removeprefix("epoch-") for p in self.dir.glob("epoch-*")]
        return sorted(int(n) for n in numbers if n.isdigit())  # not the half-written epoch-NNNN.tmp

    def latest(self) -> int:
        """The last completed epoch with a backup; 0 when there is none."""
        return max(self.epochs(), default=0)

    def drop_partial(self) -> None:
        """Delete half-written backups. (Other runs' backups stay: a queued run may resume from them.)"""
        for partial in self.dir.glob("*.tmp") if self.keep else []:
            shutil.rmtree(partial, ignore_errors=True)

    def remove(self, epoch: int) -> None:
        """Delete a backup, renamed first: a kill midway leaves a `.tmp` folder, not a damaged backup."""
        doomed = self.dir / f"epoch-{epoch:04d}.tmp"
        shutil.rmtree(doomed, ignore_errors=True)
        (self.dir / f"epoch-{epoch:04d}").rename(doomed)
        shutil.rmtree(doomed)

    def drop(self, epoch: int, why: str) -> None:
        print(f"warning: {self.dir}: backup of epoch {epoch} is damaged ({why}); dropped", file=sys.stderr)
        self.remove(epoch)

    def drop_damaged(self) -> None:
        """Drop, with one warning line each, the backups that fail their manifest."""
        for epoch in self.epochs():
            if why := damage(self.dir / f"epoch-{epoch:04d}", epoch):
                self.drop(epoch, why)

    def save(
        self, model: Any, epoch: int, metrics_dir: Path | None, state: dict[str, np.ndarray] | None = None
    ) -> None:
        """Back up the state after `epoch` completed epochs (with the callbacks' `state` arrays, if any),
        then drop all but the last KEEP backups. DiskFull, leaving no partial folder, if the disk is full."""
        if not self.keep:
            return
        final = self.dir / f"epoch-{epoch:04d}"
        partial = self.dir / f"epoch-{epoch:04d}.tmp"
        files = backup_files(model, metrics_dir, state)
        files[MANIFEST] = manifest(epoch, files)  # last in the dict, so written last
        folders = {parent for name in files for parent in PurePosixPath(name).parents}
        needed = sum(-(-len(data) // BLOCK) * BLOCK for data in files.values()) + len(folders) * BLOCK
        try:
            check_free_space(final, needed)
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            for name, data in files.items():
                write_flushed(partial / name, data)
            for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
                fsync_path(partial / folder)
            partial.rename(final)
            fsync_path(self.dir)
            fsync_path(self.root)  # holds self.dir, new with the first backup
        except BaseException as error:
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(error, OSError) and is_disk_full(error):
                raise DiskFull(disk_full_message(final, needed, free_bytes(self.dir))) from None
            raise
        for old in self.epochs()[:-KEEP]:
            self.remove(old)

    def callback(
        self, model: Any, metrics_dir: Path | None, state: Callable[[], dict[str, np.ndarray]] | None = None
    ) -> Any:
        """A Keras callback that backs up after every epoch, with what `state()` returns then."""
        import keras

        def save(epoch: int, logs: Any) -> None:
            self.save(model, epoch + 1, metrics_dir, state() if state else None)

        return keras.callbacks.LambdaCallback(on_epoch_end=save)

    def restore(self, model: Any, epoch: int, metrics_dir: Path | None) -> dict[str, np.ndarray] | None:
        """Load the state after `epoch` epochs into `model`, and its DVCLive folder into `metrics_dir`;
        return the callbacks' state arrays saved with it. None, the backup dropped with a warning, when
        Keras cannot load its weights (`model` may then hold some of them)."""
        for newer in [e for e in self.epochs() if e > epoch]:  # a worker ahead of the others redoes it
            self.remove(newer)
        saved = self.dir / f"epoch-{epoch:04d}"
        try:
            model.load_weights(saved / WEIGHTS)
        except Exception as error:  # h5py's OSError, Keras' ValueError for a file of another model, ...
            self.drop(epoch, f"Keras cannot load its weights: {' '.join(str(error).split())}")
            return None
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            shutil.copytree(saved / "metrics", metrics_dir)
        if not (saved / STATE).exists():
            return {}
        with np.load(saved / STATE) as state:
            return dict(state)

    def delete(self) -> None:
        if not self.keep:
            return
        shutil.rmtree(self.dir, ignore_errors=True)


def model_variables(model: Any) -> list[Any]:
    optimizer = getattr(model, "optimizer", None)
    return [*model.variables, *(optimizer.variables if optimizer is not None else [])]


def resume(backup: Backup, strategy: Any, model: Any, metrics_dir: Path | None) -> tuple[int, dict[str, Any]]:
    """Load the last whole backup of this run into `model` (and DVCLive's folder) if there is one; return
    the number of epochs it completed (0 when training starts afresh; every worker gets the same answer)
    and the callbacks' state saved with it."""
    if len(set(distribute.from_every_worker(strategy, int(backup.key[:15], 16)))) > 1:
        raise StageError(
            "the workers differ in params.yaml or in the stage's input files; make them the same"
        )
    backup.drop_partial()
    fresh = None  # the model's variables before any backup was loaded into it
    while True:
        backup.drop_damaged()
        # Workers killed a moment apart may be one backup apart: all resume from the oldest.
        epoch = min(distribute.from_every_worker(strategy, backup.latest()))
        if epoch and epoch not in backup.epochs():
            raise StageError(
                f"{backup.dir}: no backup of epoch {epoch}, where the other workers resume; "
                f"delete {backup.root} on every worker to start over"
            )
        if not epoch:
            for variable, value in zip(model_variables(model), fresh or []):  # undo a load that failed
                variable.assign(value)
            return 0, {}
        if fresh is None:
            fresh = [v.numpy() for v in model_variables(model)]
        state = backup.restore(model, epoch, metrics_dir)
        # A worker whose weights Keras could not load has dropped them: all try again an epoch earlier.
        if min(distribute.from_every_worker(strategy, int(state is not None))):
            break
    print(f"train: resuming after epoch {epoch} from {backup.dir}")
    return epoch, state
