"""The model: an MLP built from the `model:` params, compiled, and summarised as text.

Defaults are the classic recipe: Dense(512, relu) then Dense(10, softmax), adam,
categorical_crossentropy, accuracy. The `model:` params go further (docs/better-recipe.md): more hidden
layers, normalisation, dropout, residual connections, pre-norm inverted-bottleneck blocks, weight decay and
label smoothing, and a PCA whitening of the input. Scaling to [0, 1] and flattening are layers of the
model, so the saved model takes raw uint8 images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from classifier.model.whitening import WHITENING_LAYER, set_whitening

if TYPE_CHECKING:
    import numpy as np

    from classifier.core.params_schema import Params


def build_model(
    image_size: int,
    num_classes: int,
    hidden_units: list[int],
    activation: str,
    normalization: str = "none",
    dropout: float = 0.0,
    residual: bool = False,
    seed: int | None = None,
    whitening: int = 0,
    bottleneck_blocks: int = 0,
    bottleneck_expansion: int = 4,
) -> Any:
    """The MLP, read top to bottom: raw uint8 image -> [0, 1] -> flat vector -> (whitened) -> hidden blocks ->
    softmax.

    With `whitening` = N, a fixed Dense layer maps the flat vector to N whitened components; its weights are
    zeros here, set from the training split by set_whitening (classifier/model/whitening.py).

    Each hidden block is Dense, then (optionally) batch or layer normalisation, the activation and dropout;
    with `residual`, a block as wide as its input adds that input to its output (x + block(x)).

    Then `bottleneck_blocks` inverted-bottleneck blocks, x + W2 act(W1 norm(x)), as wide as what comes
    in, W1 widening it `bottleneck_expansion` times (Bachmann et al. 2023, "Scaling MLPs"); normalised
    first, so that the residual path stays the identity, and once more after the last block.
    """
    import keras
    from keras import layers

    image = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="scale_to_unit")(image)
    x = layers.Flatten(name="flatten")(x)
    if whitening:
        # Zeros, not a random initializer: the hidden layers' seeded weights stay those drawn without it.
        x = layers.Dense(whitening, kernel_initializer="zeros", trainable=False, name=WHITENING_LAYER)(x)
    for number, units in enumerate(hidden_units, start=1):
        block_input = x
        name = f"hidden_{number}"
        if normalization == "none":
            x = layers.Dense(units, activation=activation, name=name)(x)
        else:
            # The normalisation's own shift makes the Dense bias redundant.
            x = layers.Dense(units, use_bias=False, name=name)(x)
            x = _normalization(normalization, f"{name}_{normalization}_norm")(x)
            x = layers.Activation(activation, name=f"{name}_{activation}")(x)
        if dropout > 0:
            # Seeded per layer from the params seed: the masks are part of the experiment's identity.
            layer_seed = None if seed is None else seed + number
            x = layers.Dropout(dropout, seed=layer_seed, name=f"{name}_dropout")(x)
        if residual and block_input.shape[-1] == units:
            x = layers.Add(name=f"{name}_residual")([block_input, x])
    for number in range(1, bottleneck_blocks + 1):
        x = _inverted_bottleneck(x, f"block_{number}", bottleneck_expansion, activation, normalization)
    if bottleneck_blocks and normalization != "none":
        x = _normalization(normalization, "blocks_norm")(x)
    probabilities = layers.Dense(num_classes, activation="softmax", name="class_probabilities")(x)
    return keras.Model(image, probabilities, name="mlp")


def _inverted_bottleneck(x: Any, name: str, expansion: int, activation: str, normalization: str) -> Any:
    """x + W2 act(W1 norm(x)), W1 widening x `expansion` times and W2 projecting back."""
    from keras import layers

    width = x.shape[-1]
    h = x if normalization == "none" else _normalization(normalization, f"{name}_{normalization}_norm")(x)
    h = layers.Dense(expansion * width, activation=activation, name=f"{name}_expand")(h)
    h = layers.Dense(width, name=f"{name}_project")(h)
    return layers.Add(name=f"{name}_residual")([x, h])


def _normalization(kind: str, name: str) -> Any:
    from keras import layers

    return (layers.BatchNormalization if kind == "batch" else layers.LayerNormalization)(name=name)


def compile_model(
    model: Any,
    optimizer: str,
    learning_rate: float,
    loss: str,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
) -> None:
    """Compile with accuracy as the metric. `weight_decay` is decoupled (AdamW-style): each step shrinks
    every weight by learning_rate * weight_decay, apart from the gradient."""
    import keras

    config: dict[str, Any] = {"learning_rate": learning_rate}
    if weight_decay > 0 or optimizer == "adamw":  # AdamW would otherwise add its own default, 0.004
        config["weight_decay"] = weight_decay
    if label_smoothing > 0:
        # Only the one-hot loss smooths labels (checked with the params).
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer, "config": config}),
        loss=loss,
        metrics=["accuracy"],
    )
    # Create the optimizer's slots now, so the saved file holds them and loads without a mismatch.
    model.optimizer.build(model.trainable_variables)


def compiled_model(params: Params, num_classes: int, train_images: np.ndarray | None = None) -> Any:
    """The model the `model:` params describe, built, whitened (fitted on `train_images`) and compiled:
    what build_and_compile saves, and what the benchmarks train."""
    settings = params.model
    model = build_model(
        params.preprocess.image_size,
        num_classes,
        settings.hidden_units,
        settings.activation,
        settings.normalization,
        settings.dropout,
        settings.residual,
        seed=params.seed,
        whitening=settings.whitening,
        bottleneck_blocks=settings.bottleneck_blocks,
        bottleneck_expansion=settings.bottleneck_expansion,
    )
    if settings.whitening:
        if train_images is None:
            raise ValueError("model.whitening is on: the training images are needed to fit it")
        set_whitening(model, train_images, settings.whitening_epsilon)
    compile_model(
        model,
        settings.optimizer,
        settings.learning_rate,
        settings.loss,
        settings.weight_decay,
        settings.label_smoothing,
    )
    return model


def summarize(model: Any) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=90)
    optimizer = model.optimizer
    decay = f", weight_decay={optimizer.weight_decay:g}" if optimizer.weight_decay else ""
    lines.append(f"optimizer: {optimizer.name} (learning_rate={float(optimizer.learning_rate):g}{decay})")
    smoothing = getattr(model.loss, "label_smoothing", 0)
    loss = f"{model.loss.name} (label_smoothing={smoothing:g})" if smoothing else model.loss
    lines.append(f"loss: {loss}")
    return "\n".join(lines) + "\n"
