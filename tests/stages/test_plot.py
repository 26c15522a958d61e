"""The plot stage's command: every chart a valid, byte-reproducible PNG of the configured size, with no TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from classifier.data.splits import save_split

from conftest import PROJECT, assert_png, tool_env, write_history

HISTORY = {
    "train": {"loss": [2.0, 1.4, 1.1, 0.9], "accuracy": [0.3, 0.5, 0.6, 0.7]},
    "eval": {"loss": [1.9, 1.5, 1.7, 1.5], "accuracy": [0.3, 0.45, 0.45, 0.4]},
}


@pytest.fixture(scope="module")
def plot_run(tmp_path_factory) -> Path:
    """Run `python -m stages.plot` twice on the same inputs, with TensorFlow made unimportable."""
    work = tmp_path_factory.mktemp("plot")
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    write_history(work / "train", HISTORY)
    classes = ["airplane", "automobile", "bird"]
    (work / "classes.json").write_text('["airplane", "automobile", "bird"]')
    labels = np.repeat([0, 1, 2], 10)
    predicted = np.where(np.arange(30) % 4 == 0, (labels + 1) % 3, labels)
    rows = [
        f"{classes[a]},{classes[p]},{0.5 + i / 100:.6f}" for i, (a, p) in enumerate(zip(labels, predicted))
    ]
    (work / "confusion.csv").write_text("actual,predicted,confidence\n" + "\n".join(rows) + "\n")
    images = np.random.default_rng(0).integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
    save_split(work / "test.npz", images, labels)
    # sys.modules[name] = None makes `import name` fail: proves the stage never imports TensorFlow.
    code = (
        "import runpy, sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "
        "runpy.run_module('stages.plot', run_name='__main__')"
    )
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}
    args = [sys.executable, "-c", code, "train", "confusion.csv", "."]
    for out in ("out1", "out2"):
        result = subprocess.run([*args, out], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    return work


# params.yaml: width 6 x height 4 inches at 100 dpi; the confusion matrix is square.
CHART_SIZES = {"loss.png": (600, 400), "accuracy.png": (600, 400), "per_class_accuracy.png": (600, 400),
               "confusion.png": (600, 600)}  # fmt: skip


@pytest.mark.parametrize("name", CHART_SIZES)
def test_every_chart_is_a_valid_png_of_the_configured_size(plot_run, name):
    assert_png(plot_run / "out1" / name, CHART_SIZES[name])


def test_misclassified_grid_shows_the_mistakes(plot_run):
    # 8 of the 30 test images are wrong (every 4th): a 3 x 3 grid of 1.6 x 1.8 inches + a title band.
    assert_png(plot_run / "out1" / "misclassified.png", (480, 590))


def test_charts_are_byte_reproducible(plot_run):
    for name in (*CHART_SIZES, "misclassified.png"):
        assert (plot_run / "out1" / name).read_bytes() == (plot_run / "out2" / name).read_bytes(), name


@pytest.mark.parametrize("name", ["loss.png", "accuracy.png"])
def test_best_epoch_star_is_drawn(plot_run, name):
    # The marker (and its legend entry) is the only crimson in a learning-curve chart.
    pixels = np.asarray(Image.open(plot_run / "out1" / name).convert("RGB")).astype(int)
    crimson = (np.abs(pixels - [220, 20, 60]).sum(axis=2) < 30).sum()
    assert crimson > 50, f"{name}: {crimson} crimson pixels"
