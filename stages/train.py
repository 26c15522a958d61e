"""Stage 4: fit the compiled model on the prepared data, logging every epoch with DVCLive.

Same math as the classic `model.fit(x, y, batch_size=32)`: a fresh shuffle every epoch, one optimizer
update per batch of `train.batch_size`, validation after every epoch. What makes it fast on a CPU
(docs/performance.md): the uint8 images stay in memory as one tensor, batches are gathered inside
TensorFlow (classifier/training/batches.py), many batches run per call and each step is compiled by XLA
(classifier/training/fit.py).

Beyond the recipe, all off by default (docs/better-recipe.md): a warm-up + cosine learning rate
(classifier/training/schedules.py), early stopping that keeps the best epoch's weights (classifier/training/callbacks.py)
and augmentation of the training batches (classifier/training/augment.py).

A killed run resumes after its last completed epoch (classifier/training/backup.py), and `train.distribution`
spreads every batch over several devices or machines (classifier/training/distribute.py): docs/scaling-and-resuming.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from pathlib import Path

from classifier.training import distribute
from classifier.training.backup import DEFAULT_DIR, Backup, resume, run_key
from classifier.training.batches import load_images
from classifier.training.best_epoch import best_epoch
from classifier.training.callbacks import callback_state, early_stopping_for, restore_callback_state
from classifier.core.errors import run
from classifier.core.files import write_json
from classifier.training.fit import fit
from classifier.model.saving import load_model, save_model
from classifier.core.params import load_params
from classifier.model.runtime import configure_tensorflow, environment
from classifier.training.schedules import use_learning_rate_schedule
from classifier.training.timing import describe, epoch_timer, median_epoch, train_timing

# oneDNN's allocator keeps every freed block in its own pool; the system allocator gives large blocks back
# (~240 MB less peak memory on CIFAR-10). Read when TensorFlow loads: set before anything imports it.
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compiled_model", type=Path, help=".keras model from build_and_compile")
    parser.add_argument("data_dir", type=Path, help="directory with train.npz and validation.npz")
    parser.add_argument("model", type=Path, help="where to save the trained .keras model")
    parser.add_argument("metrics_dir", type=Path, help="DVCLive directory for per-epoch metrics")
    parser.add_argument("--timing", type=Path, help="where to write how long the epochs took (a JSON metric)")
    parser.add_argument("--backup-dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    args = parser.parse_args()
    params = load_params()
    train_params, seed = params.train, params.seed
    worker = distribute.worker_index(train_params.distribution)
    chief = worker == 0  # the only process that writes the model and the metrics

    configure_tensorflow(seed=seed, threads=train_params.threads)
    strategy = distribute.make_strategy(train_params.distribution, train_params.batch_size)
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    with strategy.scope() if strategy else contextlib.nullcontext():
        model = load_model(args.compiled_model)
    inputs = [args.compiled_model, args.data_dir / "train.npz", args.data_dir / "validation.npz"]
    train = load_images(inputs[1])
    validation = load_images(inputs[2])
    backup = Backup(args.backup_dir, run_key(seed, train_params, inputs), worker)
    metrics_dir = args.metrics_dir if chief else None
    use_learning_rate_schedule(model, train_params, len(train[1]), distribute.replicas(strategy))
    initial_epoch, state = resume(backup, strategy, model, metrics_dir)
    stopper, timer = early_stopping_for(train_params), epoch_timer()
    restore_callback_state(model, stopper, state, timer)
    # After DVCLive's callback has logged the epoch and early stopping has seen it, so that the backup
    # holds both (and the epoch's time).
    callbacks = [timer, backup.callback(model, metrics_dir, lambda: callback_state(model, stopper, timer))]
    if stopper:
        callbacks.insert(0, stopper)
    verbose = 1 if sys.stdout.isatty() else 2  # progress bars on a terminal, one line per epoch in logs
    if chief:
        # dvcyaml=False: the metrics and plots are declared in dvc.yaml by hand, not rewritten by DVCLive.
        resumed = initial_epoch > 0
        with Live(dir=str(metrics_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resumed) as live:
            live.step = initial_epoch  # DVCLive's own resume would log the epoch after epoch 1 as step 0 again
            callbacks.insert(0, DVCLiveCallback(live=live))
            fit(model, train, validation, train_params, seed, callbacks, verbose, strategy, initial_epoch)
        write_json(metrics_dir / "best.json", {"best": best_epoch(metrics_dir)})  # of the whole run, resumed or not
        # Where this result came from, so that results from two machines are never mistaken for one.
        write_json(metrics_dir / "environment.json", {"environment": environment()})
        timing = train_timing(timer.seconds)
        print(f"train: {len(timer.seconds)} epochs in {describe(timing['seconds'])} "
              f"(median {median_epoch(timer.seconds):.1f} s per epoch)")  # fmt: skip
        if args.timing:
            write_json(args.timing, timing)
        del train, validation  # saving needs memory of its own: free the images first (peak RSS);
        gc.collect()  # tf.data's functions hold them in reference cycles
        save_model(model, args.model)
    else:
        fit(model, train, validation, train_params, seed, callbacks, verbose, strategy, initial_epoch)
    backup.delete()


if __name__ == "__main__":
    run(main)
