"""TensorFlow set up so results repeat: seeds, op determinism, thread counts."""

from __future__ import annotations

import os

def configure_tensorflow(seed: int | None = None, threads: int | None = None) -> None:
    """Pin what results depend on: every random seed, op determinism and (when given) thread counts.

    Call before TensorFlow runs any op. Thread counts change the order of floating-point sums, so
    they are params (part of an experiment's identity), never derived from the machine.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.experimental.enable_op_determinism()
    if seed is not None:
        keras.utils.set_random_seed(seed)
