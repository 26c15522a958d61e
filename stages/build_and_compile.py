"""Stage 3: build the MLP from params, compile it, and save it untrained with a readable summary.

Defaults are the classic recipe: Dense(512, relu) then Dense(10, softmax), adam,
categorical_crossentropy, accuracy; classifier/model.py builds it from the `model:` params.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from classifier.errors import run
from classifier.files import read_json, write_text
from classifier.model import build_model, compile_model, summarize
from classifier.model_files import save_model
from classifier.params import load_params
from classifier.runtime import configure_tensorflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("classes", type=Path, help="classes.json from preprocess")
    parser.add_argument("model", type=Path, help="where to save the compiled, untrained .keras model")
    parser.add_argument("summary", type=Path, help="where to write the model summary text")
    args = parser.parse_args()
    params = load_params()
    settings = params["model"]

    configure_tensorflow(seed=params["seed"])
    model = build_model(
        image_size=params["preprocess"]["image_size"],
        num_classes=len(read_json(args.classes)),
        hidden_units=settings["hidden_units"],
        activation=settings["activation"],
        normalization=settings["normalization"],
        dropout=settings["dropout"],
        residual=settings["residual"],
        seed=params["seed"],
    )
    compile_model(
        model,
        settings["optimizer"],
        settings["learning_rate"],
        settings["loss"],
        weight_decay=settings["weight_decay"],
        label_smoothing=settings["label_smoothing"],
    )
    save_model(model, args.model)
    write_text(args.summary, summarize(model))
    print(summarize(model), end="")


if __name__ == "__main__":
    run(main)
