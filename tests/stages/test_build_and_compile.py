"""The build_and_compile stage's command: its outputs are byte-identical run to run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT, tool_env


def test_build_and_compile_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    """Keras stamps dates and object ids into .keras files; ours must not change between processes."""
    processes = []
    for run in ("a", "b"):  # two processes at once: the same wall time as one on two cores
        work = tmp_path / run
        work.mkdir()
        shutil.copy(PROJECT / "params.yaml", work / "params.yaml")
        (work / "classes.json").write_text('["cat", "dog"]')
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "stages.build_and_compile", "classes.json", "compiled.keras", "summary.txt"],
            cwd=work, env={**tool_env(), "PYTHONPATH": str(PROJECT)}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    for process in processes:
        output = process.communicate(timeout=240)[0]
        assert process.returncode == 0, output
    outputs = [(tmp_path / run / "compiled.keras").read_bytes() for run in ("a", "b")]
    assert outputs[0] == outputs[1]
