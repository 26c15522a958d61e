"""Test-time augmentation: a model whose prediction is the mean of its predictions on views of the image.

The views are the image's mirror image (`model.flip_average`) and copies of it shifted by
`model.shift_average` pixels, black filling what moves in, as train.augment.crop_padding does in
training (the image moved up, down, left, right and diagonally: 9 views, 18 with the mirror images).
The train stage fits the plain model (training is unchanged, and so is its validation accuracy), then
saves it wrapped in this one: the test accuracy, every exported format and predict then all do the same
math.

Built from Keras' own layers only, so the saved model still loads in safe mode, and from ops that every
export format converts (LiteRT's converter refuses the Pad op of Keras' ZeroPadding2D on uint8 images): a
view moves the image's columns, then its rows, each with a fixed Dense layer over that axis whose 0/1
kernel says which input pixel every output pixel is (or none: black). Exact, as the pixels are multiplied
by 1 or 0 only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

MIRROR_LAYER = "mirror"  # the fixed Dense layer that reverses the width axis
AVERAGE_LAYER = "view_average"
FLIP_AVERAGE_LAYER = "flip_average"  # its name in models saved by commit 7011b51 and before


def with_view_average(model: Any, flip: bool, shift: int) -> Any:
    """A model taking `model`'s input images that returns the mean of `model` on views of them: the image
    moved by -shift, 0 and +shift pixels down and right (all 9 pairs) when `shift`, and the left-right
    mirror image of each when `flip`. `model` is shared, not copied; with neither, `model` itself."""
    import keras
    from keras import layers

    if not flip and not shift:
        return model
    image = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype, name="image")
    height, width = image.shape[1], image.shape[2]
    steps = (-shift, 0, shift) if shift else (0,)
    column_maps = [(f"shift_columns_{x}", moved_by(width, x)) for x in steps if x]
    if flip:
        mirror = np.eye(width)[::-1]
        column_maps += [
            (f"{MIRROR_LAYER}_columns_{x}" if x else MIRROR_LAYER, mirror @ moved_by(width, x)) for x in steps
        ]
    columns_moved = [image] + [axis_map(kernel, 2, name)(image) for name, kernel in column_maps]
    row_maps = [axis_map(moved_by(height, y), 1, f"shift_rows_{y}") for y in steps if y]
    views = columns_moved + [move(view) for move in row_maps for view in columns_moved]
    probabilities = layers.Average(name=AVERAGE_LAYER)([model(view) for view in views])
    return keras.Model(image, probabilities, name=f"{model.name}_{AVERAGE_LAYER}")


def moved_by(size: int, step: int) -> np.ndarray:
    """The 0/1 kernel that moves pixels `step` places along an axis of `size` (down or right if positive):
    output pixel j is input pixel j - step, black where that is outside the image."""
    return np.eye(size, k=step)


def axis_map(kernel: np.ndarray, axis: int, name: str) -> Callable[[Any], Any]:
    """A function of images (batch, height, width, channels) that maps their rows (axis 1) or columns
    (axis 2) with the fixed `kernel`: output pixel j along that axis = sum over i of input pixel i times
    kernel[i, j]. Its layers are made once and shared by every call."""
    from keras import layers

    # Dense maps the last axis: move `axis` there, then back.
    to_last, back = ((2, 3, 1), (3, 1, 2)) if axis == 1 else ((1, 3, 2), (1, 3, 2))
    into, out = layers.Permute(to_last, name=f"{name}_in"), layers.Permute(back, name=f"{name}_out")
    dense = layers.Dense(len(kernel), use_bias=False, trainable=False, name=name)
    dense.build((None, None, None, len(kernel)))
    dense.set_weights([kernel.astype("float32")])
    return lambda images: out(dense(into(images)))


def unwrapped(model: Any) -> Any:
    """The trained model inside a model wrapped by with_view_average; any other model as it is."""
    import keras

    if not {AVERAGE_LAYER, FLIP_AVERAGE_LAYER} & {layer.name for layer in model.layers}:
        return model
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))
