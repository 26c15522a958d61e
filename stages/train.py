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
The job itself, from these paths and the params, is classifier/training/job.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from classifier.core.errors import run
from classifier.core.params import load_params
from classifier.model.checks import check_model_file
from classifier.model.runtime import configure_tensorflow
from classifier.training.job import train_model

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
    parser.add_argument(
        "--backup-dir", type=Path, help="default: the main repository's .dvc/tmp/train-backup"
    )
    args = parser.parse_args()
    params = load_params()

    check_model_file(args.compiled_model)  # a bad file is one line before TensorFlow's start (~7 s)
    configure_tensorflow(threads=params.train.threads)  # thread counts are fixed once TensorFlow starts
    train_model(
        args.compiled_model, args.data_dir, args.model, args.metrics_dir, params, args.timing, args.backup_dir
    )


if __name__ == "__main__":
    run(main)
