"""One training job, from paths and params: what the train stage runs, and what tests run in process.

The strategy, the resume from a backup (in the main repository's .dvc/tmp, locked for this run), the learning-rate schedule (set once), the callbacks in one fixed
order, the fit, then on the chief DVCLive's metrics, best.json, environment.json, the timing and the model;
last, the backup is deleted. Outputs are byte-identical for the same params and inputs.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.core.files import write_json
from classifier.core.params_schema import Params
from classifier.model.runtime import configure_tensorflow, environment
from classifier.model.saving import load_model, save_model
from classifier.model.view_average import with_view_average
from classifier.reporting.history import best_epoch, read_history
from classifier.training import distribute
from classifier.training.backup import Backup, resume, run_key
from classifier.training.backup_clean import delete_leftovers, startup_line
from classifier.training.backup_lock import locked
from classifier.training.backup_place import default_dir
from classifier.training.batches import load_images
from classifier.training.callbacks import callback_state, early_stopping_for, restore_callback_state
from classifier.training.fit import fit
from classifier.training.schedules import use_learning_rate_schedule
from classifier.training.timing import describe, epoch_timer, median_epoch, train_timing


@dataclass(frozen=True)
class TrainedModel:
    model: Any  # the Keras model as saved (with the best epoch's weights where those are kept, and wrapped
    # by with_view_average with model.flip_average or model.shift_average)
    history: dict[str, list[float]]  # per epoch trained by this call: after a resume, the epochs after it


def train_model(
    compiled: Path,
    data_dir: Path,
    out_model: Path,
    metrics_dir: Path,
    params: Params,
    timing: Path | None = None,
    backup_dir: Path | None = None,
) -> TrainedModel:
    """Fit the compiled model on `data_dir`'s train.npz and validation.npz with the `train:` params.

    A run killed before resumes after its last backed-up epoch, kept in `backup_dir` (default: the main
    repository's .dvc/tmp/train-backup, wherever the stage runs: backup_place.py). Only the chief
    (worker 0) writes the model, DVCLive's folder `metrics_dir` and the `timing` JSON. Thread counts are fixed when TensorFlow
    starts, so set them first with configure_tensorflow(threads=params.train.threads); this seeds
    TensorFlow itself, so two jobs in one process with the same params train identically.
    """
    train = params.train
    worker = distribute.worker_index(train.distribution)
    chief = worker == 0  # the only process that writes the model and the metrics
    configure_tensorflow(seed=params.seed)
    strategy = distribute.make_strategy(train.distribution, train.batch_size)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = load_model(compiled)
    inputs = [compiled, data_dir / "train.npz", data_dir / "validation.npz"]
    key = run_key(params.seed, train, inputs)
    backup_dir = backup_dir or default_dir()
    if chief and (line := startup_line(backup_dir, key)):
        print(line)
    with locked(Backup(backup_dir, key, worker)) as backup:
        trained = _train(model, inputs, out_model, metrics_dir, timing, params, backup, strategy, chief)
    delete_leftovers(key)
    return trained


def _train(
    model: Any,
    inputs: list[Path],
    out_model: Path,
    metrics_dir: Path,
    timing: Path | None,
    params: Params,
    backup: Backup,
    strategy: Any,
    chief: bool,
) -> TrainedModel:
    """The fit on `inputs`' train and validation splits, resumed from `backup` (locked for this run),
    then on the chief the outputs."""
    train = params.train
    train_split, validation_split = load_images(inputs[1]), load_images(inputs[2])
    live_dir = metrics_dir if chief else None
    # Before loading a backup: the optimizer's saved variables differ with and without a schedule.
    use_learning_rate_schedule(model, train, len(train_split[1]), distribute.replicas(strategy))
    initial_epoch, state = resume(backup, strategy, model, live_dir)
    stopper, timer = early_stopping_for(train), epoch_timer()
    restore_callback_state(model, stopper, state, timer)
    verbose = 1 if sys.stdout.isatty() else 2  # progress bars on a terminal, one line per epoch in logs
    with dvclive_logger(live_dir, initial_epoch) as logger:
        # The backup comes after DVCLive has logged the epoch, early stopping has seen it and the timer
        # has timed it, so that it holds all three.
        saver = backup.callback(model, live_dir, lambda: callback_state(model, stopper, timer))
        callbacks = [callback for callback in (logger, stopper, timer, saver) if callback is not None]
        splits = train_split, validation_split
        history = fit(model, *splits, train, params.seed, callbacks, verbose, strategy, initial_epoch)
    saved = with_view_average(model, params.model.flip_average, params.model.shift_average)
    if chief:
        # Of the whole run, resumed or not: from DVCLive's log of every epoch.
        write_json(metrics_dir / "best.json", {"best": best_epoch(read_history(metrics_dir))})
        # Where this result came from, so that results from two machines are never mistaken for one.
        write_json(metrics_dir / "environment.json", {"environment": environment()})
        seconds = train_timing(timer.seconds)
        print(f"train: {len(timer.seconds)} epochs in {describe(seconds['seconds'])} "
              f"(median {median_epoch(timer.seconds):.1f} s per epoch)")  # fmt: skip
        if timing:
            write_json(timing, seconds)
        del splits, train_split, validation_split  # saving needs memory of its own: free the images first
        gc.collect()  # (peak RSS); tf.data's functions hold them in reference cycles
        save_model(saved, out_model)
    backup.delete()
    return TrainedModel(saved, history.history)


@contextlib.contextmanager
def dvclive_logger(metrics_dir: Path | None, initial_epoch: int) -> Iterator[Any]:
    """DVCLive's Keras callback logging into `metrics_dir` (None: this worker logs nothing)."""
    if metrics_dir is None:
        yield None
        return
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    # dvcyaml=False: the metrics and plots are declared in dvc.yaml by hand, not rewritten by DVCLive.
    resumed = initial_epoch > 0
    with Live(dir=str(metrics_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resumed) as live:
        live.step = initial_epoch  # DVCLive's own resume would log the epoch after epoch 1 as step 0 again
        yield DVCLiveCallback(live=live)
