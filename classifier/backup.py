"""Resume an interrupted train stage from its last completed epoch.

After every epoch the train stage leaves a backup outside DVC's outputs (default `.dvc/tmp/train-backup`,
which git and DVC ignore): `<run key>-worker-<i>/epoch-0007/` holds the weights and optimizer state after
7 epochs and, on the worker that writes the metrics, a copy of the DVCLive folder at that moment. DVC
deletes a stage's outputs before it reruns the stage, so the DVCLive history must come back from the
backup too. A backup is written beside the last one and renamed into place, so a kill at any instant
leaves a whole one. The run key is a hash of the params and input files the stage reads: a backup is
only ever used by the run that made it. A run that finishes deletes its backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from classifier import distribute
from classifier.errors import StageError

DEFAULT_DIR = Path(".dvc/tmp/train-backup")
KEEP = 2  # workers killed a moment apart may hold backups one epoch apart: keep the previous one too


def run_key(params: dict[str, Any], inputs: list[Path]) -> str:
    """What makes a run: the seed, every train param and the bytes of every input file."""
    digest = hashlib.sha256(json.dumps([params["seed"], params["train"]], sort_keys=True).encode())
    for path in inputs:
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


class Backup:
    """The backups of one worker of one run: `root/<key>-worker-<worker>/epoch-NNNN/`."""

    def __init__(self, root: Path, key: str, worker: int = 0):
        self.key = key
        self.suffix = f"-worker-{worker}"
        self.root = Path(root)
        self.dir = self.root / f"{key}{self.suffix}"

    def epochs(self) -> list[int]:
        """Completed epochs with a whole backup, oldest first."""
        if not self.dir.is_dir():
            return []
        numbers = [p.name.removeprefix("epoch-") for p in self.dir.glob("epoch-*")]
        return sorted(int(n) for n in numbers if n.isdigit())  # not the half-written epoch-NNNN.tmp

    def latest(self) -> int:
        """The last completed epoch with a backup; 0 when there is none."""
        return max(self.epochs(), default=0)

    def forget_other_runs(self) -> None:
        """Delete this worker's backups of runs with other params or inputs, and half-written ones."""
        for stale in self.root.glob(f"*{self.suffix}"):
            if stale != self.dir:
                shutil.rmtree(stale, ignore_errors=True)
        for partial in self.dir.glob("*.tmp"):
            shutil.rmtree(partial, ignore_errors=True)

    def save(
        self, model: Any, epoch: int, metrics_dir: Path | None, state: dict[str, np.ndarray] | None = None
    ) -> None:
        """Back up the state after `epoch` completed epochs (with the callbacks' `state` arrays, if any),
        then drop all but the last KEEP backups."""
        final = self.dir / f"epoch-{epoch:04d}"
        partial = self.dir / f"epoch-{epoch:04d}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        model.save_weights(partial / "model.weights.h5")  # weights and optimizer state
        if state:
            np.savez(partial / "state.npz", **state)
        if metrics_dir is not None:
            shutil.copytree(metrics_dir, partial / "metrics")
        partial.rename(final)
        for old in self.epochs()[:-KEEP]:
            shutil.rmtree(self.dir / f"epoch-{old:04d}")

    def callback(
        self, model: Any, metrics_dir: Path | None, state: Callable[[], dict[str, np.ndarray]] | None = None
    ) -> Any:
        """A Keras callback that backs up after every epoch, with what `state()` returns then."""
        import keras

        def save(epoch: int, logs: Any) -> None:
            self.save(model, epoch + 1, metrics_dir, state() if state else None)

        return keras.callbacks.LambdaCallback(on_epoch_end=save)

    def restore(self, model: Any, epoch: int, metrics_dir: Path | None) -> dict[str, np.ndarray]:
        """Load the state after `epoch` epochs into `model`, and its DVCLive folder into `metrics_dir`;
        return the callbacks' state arrays saved with it."""
        for newer in [e for e in self.epochs() if e > epoch]:  # a worker ahead of the others redoes it
            shutil.rmtree(self.dir / f"epoch-{newer:04d}")
        saved = self.dir / f"epoch-{epoch:04d}"
        model.load_weights(saved / "model.weights.h5")
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            shutil.copytree(saved / "metrics", metrics_dir)
        if not (saved / "state.npz").exists():
            return {}
        with np.load(saved / "state.npz") as state:
            return dict(state)

    def delete(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # other workers on this machine may still be using it
            self.root.rmdir()


def resume(backup: Backup, strategy: Any, model: Any, metrics_dir: Path | None) -> tuple[int, dict[str, Any]]:
    """Load the last backup of this run into `model` (and DVCLive's folder) if there is one; return the
    number of epochs it completed (0 when training starts afresh; every worker gets the same answer) and
    the callbacks' state saved with it."""
    if len(set(distribute.from_every_worker(strategy, int(backup.key[:15], 16)))) > 1:
        raise StageError("the workers differ in params.yaml or in the stage's input files; make them the same")
    backup.forget_other_runs()
    # Workers killed a moment apart may be one backup apart: all resume from the oldest.
    epoch = min(distribute.from_every_worker(strategy, backup.latest()))
    if epoch and epoch not in backup.epochs():
        raise StageError(
            f"{backup.dir}: no backup of epoch {epoch}, where the other workers resume; "
            f"delete {backup.root} on every worker to start over"
        )
    if not epoch:
        return 0, {}
    state = backup.restore(model, epoch, metrics_dir)
    print(f"train: resuming after epoch {epoch} from {backup.dir}")
    return epoch, state
