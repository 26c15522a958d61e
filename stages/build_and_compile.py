"""Stage 3: build the MLP from params, compile it, and save it untrained with a readable summary.

With `model.whitening` on, its whitening layer is fitted here, on the training split.

Defaults are the classic recipe: Dense(512, relu) then Dense(10, softmax), adam,
categorical_crossentropy, accuracy; classifier/model/build.py builds it from the `model:` params.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from classifier.core.errors import StageError, run
from classifier.core.files import read_json, write_text
from classifier.core.params import load_params
from classifier.data.splits import load_split
from classifier.model.build import compiled_model, summarize
from classifier.model.runtime import configure_tensorflow
from classifier.model.saving import save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("classes", type=Path, help="classes.json from preprocess")
    parser.add_argument("model", type=Path, help="where to save the compiled, untrained .keras model")
    parser.add_argument("summary", type=Path, help="where to write the model summary text")
    parser.add_argument(
        "--train-split", type=Path, help="train.npz from preprocess, read only to fit model.whitening"
    )
    args = parser.parse_args()
    params = load_params()
    model_params = params.model  # `model` is the Keras model below
    if model_params.whitening and args.train_split is None:
        raise StageError(
            f"model.whitening = {model_params.whitening}: pass the training split with --train-split"
        )

    configure_tensorflow(seed=params.seed)
    train_images = load_split(args.train_split)[0] if model_params.whitening else None
    model = compiled_model(params, len(read_json(args.classes)), train_images)
    save_model(model, args.model)
    write_text(args.summary, summarize(model))
    print(summarize(model), end="")


if __name__ == "__main__":
    run(main)
