"""Stage 3: build the MLP from params, compile it, and save it untrained with a readable summary.

Defaults are the classic recipe: Dense(512, relu) then Dense(10, softmax), adam,
categorical_crossentropy, accuracy. Scaling to [0, 1] and flattening are layers of the model, so the
saved model takes raw uint8 images.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stages.common import configure_tensorflow, load_params, read_json, run, save_model, write_text


def build_model(image_size: int, num_classes: int, hidden_units: list[int], activation: str) -> Any:
    import keras
    from keras import layers

    model = keras.Sequential(name="mlp")
    model.add(keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="image"))
    model.add(layers.Rescaling(1.0 / 255, name="scale_to_unit"))
    model.add(layers.Flatten(name="flatten"))
    for number, units in enumerate(hidden_units, start=1):
        model.add(layers.Dense(units, activation=activation, name=f"hidden_{number}"))
    model.add(layers.Dense(num_classes, activation="softmax", name="class_probabilities"))
    return model


def compile_model(model: Any, optimizer: str, learning_rate: float, loss: str) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": learning_rate}}),
        loss=loss,
        metrics=["accuracy"],
    )
    # Create the optimizer's slots now, so the saved file holds them and loads without a mismatch.
    model.optimizer.build(model.trainable_variables)


def summarize(model: Any) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=90)
    optimizer = model.optimizer
    lines.append(f"optimizer: {optimizer.name} (learning_rate={float(optimizer.learning_rate):g})")
    lines.append(f"loss: {model.loss}")
    return "\n".join(lines) + "\n"


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
    )
    compile_model(model, settings["optimizer"], settings["learning_rate"], settings["loss"])
    save_model(model, args.model)
    write_text(args.summary, summarize(model))
    print(summarize(model), end="")


if __name__ == "__main__":
    run(main)
