"""Flip test-time augmentation: a model whose prediction is the mean of the image's and its mirror image's.

The train stage fits the plain model (training is unchanged, and so is its validation accuracy), then
with `model.flip_average` saves it wrapped in this one: the test accuracy, every exported format and
predict then all do the same math. Built from Keras' own layers only, so the saved model still loads
in safe mode: a fixed Dense layer over the width axis mirrors the image, exactly (its kernel holds one
1 per column, and 0 elsewhere).
"""

from __future__ import annotations

from typing import Any

MIRROR_LAYER = "mirror"  # the fixed Dense layer that reverses the width axis
AVERAGE_LAYER = "flip_average"


def with_flip_average(model: Any) -> Any:
    """A model taking `model`'s input images that returns the mean of `model` on them and on their mirror
    images (left-right); `model` is shared, not copied."""
    import keras
    import numpy as np
    from keras import layers

    image = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype, name="image")
    width = image.shape[2]
    mirror = layers.Dense(width, use_bias=False, trainable=False, name=MIRROR_LAYER)
    # (height, width, channels) -> (height, channels, width): the Dense then maps the width axis.
    by_width = layers.Permute((1, 3, 2), name="width_last")(image)
    mirrored = layers.Permute((1, 3, 2), name="channels_last")(mirror(by_width))
    mirror.set_weights([np.eye(width, dtype="float32")[::-1]])
    probabilities = layers.Average(name=AVERAGE_LAYER)([model(image), model(mirrored)])
    return keras.Model(image, probabilities, name=f"{model.name}_{AVERAGE_LAYER}")
