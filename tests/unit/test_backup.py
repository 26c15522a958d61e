"""classifier/training/backup.py and batches.py: what a resume relies on: backups kept and forgotten, run keys, shuffle
order from seed and epoch; backups checked against their manifest, a full disk one error."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from classifier.core.files import DiskFull
from classifier.core.params import load_params
from classifier.model.saving import load_model
from classifier.training.backup import Backup, model_variables, resume, run_key

from conftest import PROJECT


def test_shuffle_order_depends_only_on_seed_and_epoch() -> None:
    """What makes a resumed run see the batches an uninterrupted one would: no hidden iteration state."""
    import tensorflow as tf

    from classifier.training.batches import index_batches

    epoch = tf.Variable(0, dtype=tf.int64)
    batches = index_batches(10, 4, seed=7, epoch=epoch)

    def order(number: int) -> list[int]:
        epoch.assign(number)
        return np.concatenate([b.numpy() for b in batches]).tolist()

    first, second, first_again = order(0), order(1), order(0)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second and first == first_again
    assert order(1) == [
        int(i) for b in index_batches(10, 4, seed=7, epoch=tf.constant(1, tf.int64)) for i in b
    ]
    # 10 rows in batches of 4 over 3 replicas: the last batch of 2 rows cannot feed 3 replicas.
    assert [len(b) for b in index_batches(10, 4, replicas=3)] == [4, 4]
    assert [len(b) for b in index_batches(10, 4, replicas=2)] == [4, 4, 2]


def test_backup_keeps_the_last_two_whole_epochs_and_leaves_other_runs(inputs: Path, tmp_path: Path) -> None:
    model = load_model(inputs / "compiled.keras")
    metrics = tmp_path / "metrics"
    (metrics / "plots").mkdir(parents=True)
    backup = Backup(tmp_path / "backup", "run-a")
    assert backup.latest() == 0
    for epoch in (1, 2, 3):
        (metrics / "plots" / "loss.tsv").write_text(f"epochs {epoch}")
        backup.save(model, epoch, metrics)
    (backup.dir / "epoch-0004.tmp").mkdir()  # killed while writing the next one
    stale = Backup(tmp_path / "backup", "run-b")
    stale.save(model, 1, None)
    other_worker = Backup(tmp_path / "backup", "run-b", worker=1)
    other_worker.save(model, 1, None)
    assert backup.epochs() == [2, 3] and backup.latest() == 3

    backup.drop_partial()
    assert not (backup.dir / "epoch-0004.tmp").exists()
    assert stale.dir.exists() and other_worker.dir.exists(), (
        "a queued run may resume from other runs' backups"
    )
    backup.restore(model, 2, tmp_path / "restored")
    assert (tmp_path / "restored" / "plots" / "loss.tsv").read_text() == "epochs 2"
    assert backup.epochs() == [2], "a worker ahead of the others drops the epoch it redoes"
    backup.delete()
    assert not backup.dir.exists()


def test_run_key_changes_with_params_and_inputs(tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    data.write_bytes(b"one")
    train = load_params(PROJECT / "params.yaml").train
    key = run_key(1, train, [data])
    assert run_key(2, train, [data]) != key
    assert run_key(1, train.model_copy(update={"epochs": 3}), [data]) != key
    data.write_bytes(b"two")
    assert run_key(1, train, [data]) != key


# ---------------------------------------------------------------------------------------------
# Backups you can trust (issue 14): a manifest written last, damaged backups dropped, a full disk.
# ---------------------------------------------------------------------------------------------


KEY = "0123456789abcdef"  # run keys are hex


def kernel(model) -> np.ndarray:
    return np.asarray(model.weights[0])


def two_backups(inputs: Path, tmp_path: Path) -> tuple[object, Backup, Path]:
    """Backups of epochs 1 and 2 (with DVCLive-like metrics), the model's first kernel set to 1.0 and
    2.0 in them; the model is left holding 9.0."""
    model = load_model(inputs / "compiled.keras")
    metrics = tmp_path / "metrics"
    (metrics / "plots").mkdir(parents=True)
    backup = Backup(tmp_path / "backup", KEY)
    for epoch in (1, 2):
        model.weights[0].assign(np.full(model.weights[0].shape, float(epoch), np.float32))
        (metrics / "plots" / "loss.tsv").write_text(f"epochs {epoch}")
        backup.save(model, epoch, metrics, {"stream": np.array([epoch])})
    model.weights[0].assign(np.full(model.weights[0].shape, 9.0, np.float32))
    return model, backup, metrics


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_the_manifest_is_written_last_and_lists_every_file(inputs: Path, tmp_path: Path, monkeypatch) -> None:
    from classifier.training import backup as module

    events: list[str] = []
    write, fsync = module.write_flushed, module.fsync_path
    monkeypatch.setattr(module, "write_flushed", lambda p, d: (events.append(f"write {p.name}"), write(p, d)))
    monkeypatch.setattr(module, "fsync_path", lambda p: (events.append(f"fsync {Path(p).name}"), fsync(p)))
    model, backup, _ = two_backups(inputs, tmp_path)
    writes = [e for e in events if e.startswith("write")]
    assert writes[-1] == "write manifest.json" and writes.count("write manifest.json") == 2
    # The backup's folder is flushed before it is renamed into place, the folder holding it after.
    assert events[-3:] == ["fsync epoch-0002.tmp", f"fsync {backup.dir.name}", "fsync backup"]

    saved = backup.dir / "epoch-0002"
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["epoch"] == 2
    files = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    listed = sorted(entry["path"] for entry in manifest["files"])
    assert listed == [name for name in files if name != "manifest.json"]
    assert listed == ["metrics/plots/loss.tsv", "model.weights.h5", "state.npz"]
    for entry in manifest["files"]:
        data = (saved / entry["path"]).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()


def truncate(folder: Path) -> str:
    weights = folder / "model.weights.h5"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    return f"model.weights.h5 is truncated to {size // 2:,} of {size:,} bytes"


def remove_a_file(folder: Path) -> str:
    (folder / "metrics" / "plots" / "loss.tsv").unlink()
    return "metrics/plots/loss.tsv is missing"


def garble_the_manifest(folder: Path) -> str:
    (folder / "manifest.json").write_text('{"epoch": 2, "files": [{"path": "model.weig')
    return "manifest.json is garbled"


def remove_the_manifest(folder: Path) -> str:
    (folder / "manifest.json").unlink()
    return "manifest.json is missing"


def flip_a_byte(folder: Path) -> str:
    weights = folder / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return "model.weights.h5 does not match its sha256"


def unloadable_weights(folder: Path) -> str:
    """Weights whose manifest agrees with them, yet are no HDF5 file: Keras cannot load them."""
    garbage = b"not an HDF5 file" * 100
    (folder / "model.weights.h5").write_bytes(garbage)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "model.weights.h5":
            entry.update(size=len(garbage), sha256=hashlib.sha256(garbage).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return "Keras cannot load its weights: Unable to synchronously open file (file signature not found)"


DAMAGES = [truncate, remove_a_file, garble_the_manifest, remove_the_manifest, flip_a_byte, unloadable_weights]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_backup_is_dropped_with_one_warning_and_the_previous_one_used(
    damage, inputs: Path, tmp_path: Path, capsys
) -> None:
    model, backup, _ = two_backups(inputs, tmp_path)
    why = damage(backup.dir / "epoch-0002")
    capsys.readouterr()
    epoch, state = resume(backup, None, model, tmp_path / "restored")
    out, err = capsys.readouterr()
    assert warnings_in(err) == [f"warning: {backup.dir}: backup of epoch 2 is damaged ({why}); dropped"]
    assert err.strip() == warnings_in(err)[0], "nothing but the warning on stderr"
    assert epoch == 1 and state["stream"].tolist() == [1]
    assert f"train: resuming after epoch 1 from {backup.dir}" in out
    assert np.all(kernel(model) == 1.0), "the model holds epoch 1's weights"
    assert (tmp_path / "restored" / "plots" / "loss.tsv").read_text() == "epochs 1"
    assert backup.epochs() == [1]


@pytest.mark.parametrize("damage", [truncate, unloadable_weights])
def test_with_no_whole_backup_left_training_starts_afresh(
    damage, inputs: Path, tmp_path: Path, capsys
) -> None:
    model, backup, _ = two_backups(inputs, tmp_path)
    backup.remove(1)
    damage(backup.dir / "epoch-0002")
    before = [v.numpy() for v in model_variables(model)]
    assert resume(backup, None, model, tmp_path / "restored") == (0, {})
    assert len(warnings_in(capsys.readouterr().err)) == 1
    assert backup.epochs() == []
    after = [v.numpy() for v in model_variables(model)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "the model is as it was"


def test_a_kill_while_an_old_backup_is_deleted_leaves_no_damaged_backup(
    inputs: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    model, backup, metrics = two_backups(inputs, tmp_path)
    real_rmtree = shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        if Path(path).name == "epoch-0001.tmp" and not ignore_errors:
            (Path(path) / "manifest.json").unlink()
            raise KeyboardInterrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        backup.save(model, 3, metrics)
    monkeypatch.undo()
    capsys.readouterr()
    assert resume(backup, None, model, tmp_path / "restored")[0] == 3
    assert warnings_in(capsys.readouterr().err) == []


def test_too_little_free_space_stops_before_writing_the_backup(
    inputs: Path, tmp_path: Path, monkeypatch
) -> None:
    from classifier.core import files

    model, backup, metrics = two_backups(inputs, tmp_path)
    monkeypatch.setattr(files, "free_bytes", lambda path: 1_000_000)
    with pytest.raises(DiskFull, match=r"epoch-0003: the disk is full \(it needs 1\.\d MB, 1\.0 MB free\)"):
        backup.save(model, 3, metrics)
    assert sorted(p.name for p in backup.dir.iterdir()) == ["epoch-0001", "epoch-0002"], (
        "nothing half-written"
    )


def test_a_disk_filling_up_during_the_backup_is_one_disk_full_error(
    inputs: Path, tmp_path: Path, monkeypatch
) -> None:
    from classifier.training import backup as module

    model, backup, metrics = two_backups(inputs, tmp_path)
    write = module.write_flushed

    def full_at_metrics(path: Path, data: bytes) -> None:
        if path.name == "loss.tsv":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(module, "write_flushed", full_at_metrics)
    with pytest.raises(DiskFull, match="epoch-0003: the disk is full"):
        backup.save(model, 3, metrics)
    assert backup.epochs() == [1, 2] and not list(backup.dir.glob("*.tmp"))


def test_a_real_full_disk_during_the_backup_is_one_disk_full_error(
    inputs: Path, tmp_path: Path, monkeypatch
) -> None:
    """On a 1 MB tmpfs, with the free-space check off: h5py never writes to the disk, so no segfault."""
    from classifier.training import backup as module

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mount.returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        monkeypatch.setattr(module, "check_free_space", lambda path, needed: None)
        backup = Backup(disk, KEY)
        with pytest.raises(DiskFull, match="epoch-0001: the disk is full"):
            backup.save(load_model(inputs / "compiled.keras"), 1, None)
        assert list(backup.dir.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
