"""PCA whitening of the input: a fixed linear map fitted on the training split, stored as a layer of the model.

An MLP's first layer sees 3,072 pixel values whose variance is concentrated in a few directions (neighbouring
pixels move together). Whitening projects the flattened image onto its first principal components and scales
each to unit variance, so that gradient steps treat every direction alike (Lin, Memisevic & Konda 2015 fit
theirs on the training images, 800 components). Being a layer of the model, the exported formats and
predict apply it too. No TensorFlow here: numpy only, so that the math is testable in isolation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WHITENING_LAYER = "whitening"  # the name of the layer in the model (classifier/model/build.py)
CHUNK_ROWS = 4096  # images at a time in float64: bounded memory whatever the size of the training split


def fit_whitening(images: np.ndarray, components: int, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of the Dense layer x -> x @ kernel + bias that whitens flattened [0, 1] images.

    `images` are the uint8 training images (N, height, width, channels); the layer's input is them scaled to
    [0, 1] and flattened, as the model does. Output j is the projection on the j-th principal component
    (largest variance first) divided by sqrt(variance_j + epsilon): epsilon keeps the faint directions, mostly
    noise, from being blown up. Computed in float64, in a fixed order: the same images give the same bytes.
    """
    count = len(images)
    flat = images.reshape(count, -1)
    if not 1 <= components <= flat.shape[1]:
        raise ValueError(f"components must be from 1 to {flat.shape[1]}, got {components}")
    if count < 2:
        raise ValueError(f"whitening needs at least 2 training images, got {count}")
    total = np.zeros(flat.shape[1])
    products = np.zeros((flat.shape[1], flat.shape[1]))
    for start in range(0, count, CHUNK_ROWS):
        chunk = flat[start : start + CHUNK_ROWS].astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        products += chunk.T @ chunk
    mean = total / count
    covariance = (products - count * np.outer(mean, mean)) / (count - 1)
    variances, vectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(variances)[::-1][:components]
    variances, vectors = np.maximum(variances[order], 0.0), vectors[:, order]
    # An eigenvector's sign is arbitrary: fix it (largest entry positive) so that the layer is reproducible.
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(components)])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    kernel = vectors / np.sqrt(variances + epsilon)
    bias = -mean @ kernel
    return kernel.astype(np.float32), bias.astype(np.float32)


def set_whitening(model: Any, images: np.ndarray, epsilon: float) -> None:
    """Fit the model's whitening layer on the training `images` (as many components as the layer has)."""
    layer = model.get_layer(WHITENING_LAYER)
    layer.set_weights(list(fit_whitening(images, layer.units, epsilon)))
