"""classifier/compat.py: every private API the project leans on still does what it relies on, against
the real libraries. A failure here after an upgrade names the entry to re-check."""

from __future__ import annotations

import ssl
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import requests

from classifier import compat

from conftest import build_tiny_model


@pytest.mark.parametrize("package", sorted(compat.CHECKED))
def test_the_installed_versions_are_the_checked_ones(package: str) -> None:
    assert version(package) == compat.CHECKED[package], (
        f"{package} {version(package)} is installed, classifier/compat.py was checked against "
        f"{compat.CHECKED[package]}: re-check its entries, then update CHECKED"
    )


def test_safe_mode_scope_refuses_a_stored_lambda(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with compat.safe_mode_scope(), pytest.raises(ValueError, match="(?i)lambda"):
        keras.saving.load_model(tmp_path / "lambda.keras", safe_mode=True)


def test_force_jit_compile_switches_xla_on_and_off() -> None:
    model = build_tiny_model([4])
    compat.force_jit_compile(model, True)
    assert model.jit_compile is True
    compat.force_jit_compile(model, False)
    assert model.jit_compile is False


def test_saved_model_fingerprint_is_a_fingerprint_def(tmp_path: Path) -> None:
    import tensorflow as tf
    from tensorflow.core.protobuf import fingerprint_pb2

    module = tf.Module()
    module.double = tf.function(lambda x: 2 * x, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "saved"))
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(
        compat.saved_model_fingerprint(tmp_path / "saved")
    )
    assert fingerprint.saved_model_checksum != 0 and fingerprint.graph_def_program_hash != 0


def test_litert_op_outputs_are_the_activations(tmp_path: Path) -> None:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    double = tf.function(lambda x: tf.nn.relu(2.0 * x), input_signature=[tf.TensorSpec([1, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([double.get_concrete_function()], double)
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    outputs = compat.litert_op_outputs(interpreter)
    written = {d["index"] for d in interpreter.get_output_details()}
    assert written <= outputs
    assert not {d["index"] for d in interpreter.get_input_details()} & outputs


def test_pool_processes_lists_the_workers() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        assert pool.submit(np.sum, [1, 2]).result() == 3
        processes = list(compat.pool_processes(pool))
        assert len(processes) == 1 and processes[0].pid > 0 and processes[0].is_alive()
    assert list(compat.pool_processes(object())) == []


def test_close_result_pipe_ends_the_wait_of_a_pool_whose_workers_were_killed() -> None:
    pool = ProcessPoolExecutor(max_workers=1)
    assert pool.submit(np.sum, [1, 2]).result() == 3
    for process in list(compat.pool_processes(pool)):
        process.kill()
        process.join()
    compat.close_result_pipe(pool)
    assert pool._result_queue._writer.closed  # what the entry reaches for is still there
    pool.shutdown(wait=True)  # returns: the manager thread saw end-of-file
    compat.close_result_pipe(object())  # not a pool: nothing to close


def test_body_timeout_adapter_puts_its_connection_in_each_pool() -> None:
    context = ssl.create_default_context()
    adapter = compat.body_timeout_adapter(7.5, context)
    for url in ("http://127.0.0.1:9/", "https://127.0.0.1:9/"):
        request = requests.Request("GET", url).prepare()
        pool = adapter.get_connection_with_tls_context(request, verify=True)
        assert pool.conn_kw["body_timeout"] == 7.5
        assert "getresponse" in vars(pool.ConnectionCls) or "getresponse" in vars(
            pool.ConnectionCls.__mro__[1]
        )
        assert (pool.conn_kw.get("ssl_context") is context) == url.startswith("https")
