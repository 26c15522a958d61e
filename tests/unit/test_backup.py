"""classifier/backup.py and batches.py: what a resume relies on: backups kept and forgotten, run keys, shuffle order from seed and epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classifier.backup import Backup, run_key
from classifier.model_files import load_model


def test_shuffle_order_depends_only_on_seed_and_epoch() -> None:
    """What makes a resumed run see the batches an uninterrupted one would: no hidden iteration state."""
    import tensorflow as tf

    from classifier.batches import index_batches

    epoch = tf.Variable(0, dtype=tf.int64)
    batches = index_batches(10, 4, seed=7, epoch=epoch)

    def order(number: int) -> list[int]:
        epoch.assign(number)
        return np.concatenate([b.numpy() for b in batches]).tolist()

    first, second, first_again = order(0), order(1), order(0)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second and first == first_again
    assert order(1) == [int(i) for b in index_batches(10, 4, seed=7, epoch=tf.constant(1, tf.int64)) for i in b]
    # 10 rows in batches of 4 over 3 replicas: the last batch of 2 rows cannot feed 3 replicas.
    assert [len(b) for b in index_batches(10, 4, replicas=3)] == [4, 4]
    assert [len(b) for b in index_batches(10, 4, replicas=2)] == [4, 4, 2]


def test_backup_keeps_the_last_two_whole_epochs_and_forgets_other_runs(inputs: Path, tmp_path: Path) -> None:
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

    backup.forget_other_runs()
    assert not stale.dir.exists() and not (backup.dir / "epoch-0004.tmp").exists()
    assert other_worker.dir.exists(), "each worker only cleans its own backups"
    backup.restore(model, 2, tmp_path / "restored")
    assert (tmp_path / "restored" / "plots" / "loss.tsv").read_text() == "epochs 2"
    assert backup.epochs() == [2], "a worker ahead of the others drops the epoch it redoes"
    backup.delete()
    assert not backup.dir.exists()


def test_run_key_changes_with_params_and_inputs(tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    data.write_bytes(b"one")
    params = {"seed": 1, "train": {"epochs": 2}, "plot": {"dpi": 100}}
    key = run_key(params, [data])
    assert run_key({**params, "plot": {"dpi": 50}}, [data]) == key, "params train does not read"
    assert run_key({**params, "seed": 2}, [data]) != key
    assert run_key({**params, "train": {"epochs": 3}}, [data]) != key
    data.write_bytes(b"two")
    assert run_key(params, [data]) != key
