"""TensorFlow set up so results repeat (seeds, op determinism, thread counts), and a record of the machine
and software a result came from: results are byte-exact on one machine but differ in the last bits
across CPUs (oneDNN and XLA pick kernels by instruction set)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The instruction sets TensorFlow's CPU kernels (oneDNN, XLA, Eigen) choose between, oldest first.
KERNEL_ISAS = (
    "sse4_2", "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
WIDEST_VECTORS = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))


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


def cpu_facts(cpuinfo: str | None = None) -> dict[str, str]:
    """CPU model, family/model numbers (which tell CPU generations apart where a VM hides the name) and
    the kernel-relevant instruction sets, from /proc/cpuinfo (empty strings where it is absent)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name", platform.processor()),
        "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "instruction_sets": " ".join(isa for isa in KERNEL_ISAS if isa in flags),
        "widest_vectors": next((name for flag, name in WIDEST_VECTORS if flag in flags), "none"),
    }


def environment() -> dict[str, Any]:
    """What a trained model's bits depend on beyond the params: the machine, versions, threads, devices.
    Call after configure_tensorflow."""
    import keras
    import numpy as np
    import tensorflow as tf

    return {
        **cpu_facts(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }
