"""Everything the project needs from Keras, TensorFlow, LiteRT, urllib3 or the standard library that they do
not offer publicly, in one place: when an upgrade moves one of these, this file is where to look, and
tests/unit/test_compat.py fails naming the entry.

Each entry says what it reaches for and the versions it was checked against (CHECKED). Nothing heavy is
imported at module level: the TensorFlow-free stages import it too, and each entry imports what it needs
when called.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

# The versions every entry below was checked against (requirements.lock pins them). A test compares them
# with what is installed, so an upgrade fails loudly here first: re-check the entries, then bump these.
CHECKED = {
    "keras": "3.15.1",
    "tensorflow-cpu": "2.21.0",
    "ai-edge-litert": "2.3.0",
    "urllib3": "2.8.0",
    "requests": "2.34.2",
}


def safe_mode_scope() -> Any:
    """Keras' safe-mode context (keras.src.saving.serialization_lib.SafeModeScope, keras 3.15).

    `keras.saving.load_model(..., safe_mode=True)` alone is overridden by a process-wide
    `keras.config.enable_unsafe_deserialization()`; the scope is not."""
    from keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(True)


def force_jit_compile(model: Any, enabled: bool) -> None:
    """Set a compiled Keras model's XLA switch (the private `Model._jit_compile`, keras 3.15).

    The public `model.jit_compile` setter refuses XLA whenever TensorFlow's op determinism is on, because
    some XLA *GPU* kernels are not deterministic; on the CPU the XLA step gives identical weights run to
    run, which the training tests check."""
    if not hasattr(model, "_jit_compile"):
        raise AttributeError("keras.Model no longer has _jit_compile: see classifier/compat.py")
    model._jit_compile = enabled


def saved_model_fingerprint(folder: str | os.PathLike) -> bytes:
    """The serialized FingerprintDef TensorFlow computes for a SavedModel folder
    (tensorflow.python.saved_model.pywrap_saved_model.fingerprinting, TF 2.21): the export stage rewrites
    fingerprint.pb with it after renumbering the graph, so that the folder's bytes are reproducible."""
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    return fingerprinting.CreateFingerprintDef(str(folder))


def litert_op_outputs(interpreter: Any) -> set[int]:
    """The tensor indices that some op of a LiteRT interpreter writes (its activations), through the
    interpreter's private `_get_ops_details()` (ai-edge-litert 2.3: no public listing of ops)."""
    return {index for op in interpreter._get_ops_details() for index in op["outputs"]}


def pool_processes(pool: Any) -> Iterator[Any]:
    """The worker processes of a concurrent.futures.ProcessPoolExecutor (its private `_processes`, Python
    3.11), so that an interrupted run can terminate them instead of waiting for their chunks."""
    yield from list((getattr(pool, "_processes", None) or {}).values())


def close_result_pipe(pool: Any) -> None:
    """Close a ProcessPoolExecutor's own copy of its result pipe's write end (the private
    `_result_queue._writer`, Python 3.11). Once its workers are gone, that turns the manager thread's wait
    for the rest of a half-sent result into end-of-file (classifier/data/decoder.py explains the hang)."""
    result_queue = getattr(pool, "_result_queue", None)
    if result_queue is not None:
        result_queue._writer.close()


def body_timeout_adapter(read_timeout: float, ssl_context: Any) -> Any:
    """A requests HTTPAdapter whose connections wait the request's timeout for the response headers and
    then `read_timeout` for each read of the body (requests' read timeout covers both), and that verify
    TLS with `ssl_context`. It swaps urllib3's connection class and keyword arguments on each pool
    (`HTTPConnectionPool.ConnectionCls` and `conn_kw`, urllib3 2.8), through the adapter hook
    `get_connection_with_tls_context` (public since requests 2.32.2)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class Connection(HTTPConnection):
        def __init__(self, *args: Any, body_timeout: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.body_timeout = body_timeout

        def getresponse(self) -> Any:
            sock = self.sock  # http.client drops it if the server closes the connection after this response
            response = super().getresponse()
            sock.settimeout(self.body_timeout)
            return response

    class SecureConnection(Connection, HTTPSConnection):
        pass

    class Adapter(HTTPAdapter):
        def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
            pool = super().get_connection_with_tls_context(*args, **kwargs)
            https = pool.scheme == "https"
            pool.ConnectionCls = SecureConnection if https else Connection
            pool.conn_kw["body_timeout"] = read_timeout
            if https:
                pool.conn_kw["ssl_context"] = ssl_context
            return pool

    return Adapter()
