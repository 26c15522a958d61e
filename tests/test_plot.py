"""The plot stage: learning curves with the best epoch, per-class accuracy, confusion heat map."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import PROJECT, tool_env
from stages import plot
from classifier.errors import StageError


def assert_png(path: Path, size: tuple[int, int] | None = None) -> Image.Image:
    """A whole, decodable PNG of a sensible size that is not a blank canvas."""
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()  # decodes every byte: a truncated file fails here
        width, height = image.size
        if size is not None:
            assert image.size == size, f"{path}: {image.size} != {size}"
        assert 200 <= width <= 4000 and 200 <= height <= 4000, f"{path}: {image.size}"
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 20, f"{path}: only {len(colours)} colours, looks blank"
        return image.copy()


def write_history(metrics_dir: Path, series: dict[str, dict[str, list[float]]]) -> Path:
    """DVCLive's layout: <dir>/plots/metrics/{train,eval}/<metric>.tsv with timestamp, step, value."""
    for folder, metrics in series.items():
        for metric, values in metrics.items():
            path = metrics_dir / "plots" / "metrics" / folder / f"{metric}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [f"{1700000000 + step}\t{step}\t{value}" for step, value in enumerate(values)]
            path.write_text("\n".join([f"timestamp\tstep\t{metric}", *rows]) + "\n")
    return metrics_dir


HISTORY = {
    "train": {"loss": [2.0, 1.4, 1.1, 0.9], "accuracy": [0.3, 0.5, 0.6, 0.7]},
    "eval": {"loss": [1.9, 1.5, 1.7, 1.5], "accuracy": [0.3, 0.45, 0.45, 0.4]},
}


def test_best_epoch_is_the_first_best_validation_value(tmp_path):
    history = {m: plot.read_history(write_history(tmp_path, HISTORY), m) for m in ("loss", "accuracy")}
    # Validation loss 1.9, 1.5, 1.7, 1.5: lowest first at the 2nd epoch. Accuracy .3 .45 .45 .4: 2nd too.
    assert plot.best_epoch(history["loss"]["validation"], "loss") == (2, 1.5)
    assert plot.best_epoch(history["accuracy"]["validation"], "accuracy") == (2, 0.45)


def test_missing_history_names_the_file(tmp_path):
    with pytest.raises(StageError, match=r"eval/loss\.tsv: missing"):
        plot.read_history(write_history(tmp_path, {"train": HISTORY["train"]}), "loss")


def test_confusion_matrix_from_csv_keeps_classes_json_order(tmp_path):
    csv = tmp_path / "confusion.csv"
    # Class names that look like numbers must stay names, in classes.json's order ("10" after "2").
    csv.write_text("actual,predicted\n2,2\n2,10\n10,10\n10,10\n10,2\n")
    matrix = plot.read_confusion(csv, ["2", "10", "unused"])
    assert matrix.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]
    # Per-class accuracy is the diagonal over the row: 1/2, 2/3, and 0 for a class with no images.
    assert plot.per_class_accuracy(matrix) == pytest.approx([0.5, 2 / 3, 0.0])


def test_confusion_with_an_unknown_class_is_a_one_line_error(tmp_path):
    csv = tmp_path / "confusion.csv"
    csv.write_text("actual,predicted\ncat,dog\n")
    with pytest.raises(StageError, match=r"confusion\.csv: classes \['dog'\] are not in classes\.json"):
        plot.read_confusion(csv, ["cat"])


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
    rows = [f"{classes[a]},{classes[p]}" for a, p in zip(labels, predicted)]
    (work / "confusion.csv").write_text("actual,predicted\n" + "\n".join(rows) + "\n")
    # sys.modules[name] = None makes `import name` fail: proves the stage never imports TensorFlow.
    code = (
        "import runpy, sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "
        "runpy.run_module('stages.plot', run_name='__main__')"
    )
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}
    args = [sys.executable, "-c", code, "train", "confusion.csv", "classes.json"]
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


def test_charts_are_byte_reproducible(plot_run):
    for name in ("loss.png", "accuracy.png", "per_class_accuracy.png", "confusion.png"):
        assert (plot_run / "out1" / name).read_bytes() == (plot_run / "out2" / name).read_bytes(), name


@pytest.mark.parametrize("name", ["loss.png", "accuracy.png"])
def test_best_epoch_star_is_drawn(plot_run, name):
    # The marker (and its legend entry) is the only crimson in a learning-curve chart.
    pixels = np.asarray(Image.open(plot_run / "out1" / name).convert("RGB")).astype(int)
    crimson = (np.abs(pixels - [220, 20, 60]).sum(axis=2) < 30).sum()
    assert crimson > 50, f"{name}: {crimson} crimson pixels"
