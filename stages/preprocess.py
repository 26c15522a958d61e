"""Stage 2: read the raw archive in place and write uint8 train / validation / test splits.

Layouts understood (classifier/data/layouts.py), each in a .tar, .tar.gz/.tgz, .zip or a directory: the
CIFAR-10 and CIFAR-100 binary versions, and an image folder [<root>/]train/<class>/<image> with
test/<class>/<image>. Members are read through the archive API, never extracted to disk, and nothing is
ever unpickled (classifier/data/archives.py checks every member first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from classifier.core.errors import run
from classifier.core.files import write_json
from classifier.core.params import load_params
from classifier.data.dataset import Options, split_validation
from classifier.data.layouts import read_dataset
from classifier.data.splits import save_split


def report_skipped(skipped: list[str], shown: int = 20) -> None:
    for message in skipped[:shown]:
        print(f"warning: skipped {message}", file=sys.stderr)
    if len(skipped) > shown:
        print(f"warning: ... and {len(skipped) - shown} more skipped images", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="archive or directory written by the download stage")
    parser.add_argument("out_dir", type=Path, help="where train/validation/test .npz and classes.json go")
    parser.add_argument("metrics", type=Path, help="where to write the image counts (JSON)")
    args = parser.parse_args()
    params = load_params()
    options = Options.from_params(params.preprocess, params.seed)
    validation = params.preprocess.validation

    dataset = read_dataset(args.raw, options)
    if validation == "test":  # the classic recipe's choice; it leaks the test set
        train = dataset.train_images, dataset.train_labels
        validation = dataset.test_images, dataset.test_labels
    else:
        train, validation = split_validation(
            dataset.train_images, dataset.train_labels, validation, options.seed
        )

    report_skipped(dataset.skipped)
    save_split(args.out_dir / "train.npz", *train)
    save_split(args.out_dir / "validation.npz", *validation)
    save_split(args.out_dir / "test.npz", dataset.test_images, dataset.test_labels)
    write_json(args.out_dir / "classes.json", dataset.classes)
    counts = {
        "classes": len(dataset.classes),
        "train_images": len(train[1]),
        "validation_images": len(validation[1]),
        "test_images": len(dataset.test_labels),
        "skipped_bad_images": len(dataset.skipped),
        "ignored_files": dataset.ignored,
    }
    write_json(args.metrics, counts)
    print(
        f"preprocess: {len(dataset.classes)} classes; train {counts['train_images']}, validation "
        f"{counts['validation_images']}, test {counts['test_images']} images; "
        f"{len(dataset.skipped)} bad images skipped, {dataset.ignored} other files ignored"
    )


if __name__ == "__main__":
    run(main)
