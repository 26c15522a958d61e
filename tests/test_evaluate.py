"""The evaluate stage's metrics, checked against values worked out by hand on a tiny fixed example."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import PROJECT, tool_env
from stages import evaluate
from classifier.errors import StageError
from classifier.params import validate_params
from classifier.splits import save_split
from classifier.charts import most_confident_mistakes, plot_misclassified
from test_plot import assert_png

# Four classes, five test images; class "d" is never the answer nor predicted.
CLASSES = ["a", "b", "c", "d"]
LABELS = np.array([0, 0, 1, 2, 2])
PROBABILITIES = np.array(
    [
        [0.70, 0.20, 0.10, 0.00],  # a -> a  right
        [0.30, 0.60, 0.10, 0.00],  # a -> b  wrong; the true class is 2nd
        [0.10, 0.80, 0.10, 0.00],  # b -> b  right
        [0.50, 0.45, 0.05, 0.00],  # c -> a  wrong; the true class is 3rd
        [0.20, 0.30, 0.50, 0.00],  # c -> c  right
    ]
)
# By hand: confusion [actual, predicted] = a: [1 1 0 0], b: [0 1 0 0], c: [1 0 1 0], d: [0 0 0 0].
EXPECTED_CONFUSION = [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
EXPECTED_PER_CLASS = {
    # precision = right / predicted as the class; recall = right / images of the class; F1 = 2PR/(P+R)
    "a": {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2},
    "b": {"precision": 1 / 2, "recall": 1 / 1, "f1": 2 * 0.5 * 1 / 1.5},
    "c": {"precision": 1 / 1, "recall": 1 / 2, "f1": 2 * 1 * 0.5 / 1.5},
    "d": {"precision": 0.0, "recall": 0.0, "f1": 0.0},  # 0/0 counts as 0, as scikit-learn reports it
}


def test_accuracy_and_top_k():
    metrics = evaluate.compute_metrics(PROBABILITIES, LABELS, top_k=2)
    assert metrics.keys() == {"loss", "accuracy", "top_2_accuracy"}
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["top_2_accuracy"] == pytest.approx(4 / 5)  # all but image 3 (true class 3rd)
    assert evaluate.top_k_accuracy(PROBABILITIES, LABELS, 1) == pytest.approx(3 / 5)
    assert evaluate.top_k_accuracy(PROBABILITIES, LABELS, 3) == pytest.approx(1.0)


def test_top_k_counts_ties_in_the_images_favour():
    # True class tied for first with another: in the top 1, as tf.math.in_top_k (Keras) decides.
    assert evaluate.top_k_accuracy(np.array([[0.4, 0.4, 0.2]]), np.array([1]), 1) == 1.0


def test_loss_is_the_mean_negative_log_probability_of_the_true_class():
    expected = -(math.log(0.7) + math.log(0.3) + math.log(0.8) + math.log(0.05) + math.log(0.5)) / 5
    assert evaluate.cross_entropy(PROBABILITIES, LABELS) == pytest.approx(expected, rel=1e-12)


def test_loss_of_a_zero_probability_is_clipped_like_keras():
    assert evaluate.cross_entropy(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-7))


def test_loss_matches_keras():
    import keras

    targets = np.eye(4, dtype=np.float32)[LABELS]
    keras_loss = float(
        np.mean(keras.losses.categorical_crossentropy(targets, PROBABILITIES.astype(np.float32)))
    )
    assert evaluate.cross_entropy(PROBABILITIES, LABELS) == pytest.approx(keras_loss, rel=1e-6)


def test_confusion_matrix_and_per_class_scores():
    matrix = evaluate.confusion_matrix(LABELS, PROBABILITIES.argmax(axis=1), len(CLASSES))
    assert matrix.tolist() == EXPECTED_CONFUSION
    scores = evaluate.per_class_scores(matrix, CLASSES)
    assert scores.keys() == EXPECTED_PER_CLASS.keys()
    for name, expected in EXPECTED_PER_CLASS.items():
        assert scores[name] == pytest.approx(expected), name


def test_confusion_rows_are_the_data_of_the_dvc_confusion_plot():
    # DVC's confusion template (dvc.yaml: x actual, y predicted) counts these rows per cell.
    rows = evaluate.confusion_rows(LABELS, PROBABILITIES.argmax(axis=1), CLASSES)
    assert rows == "actual,predicted\na,a\na,b\nb,b\nc,a\nc,c\n"


def test_most_confident_mistakes_come_first():
    # Mistakes: image 1 (b at 0.6) and image 3 (a at 0.5).
    assert most_confident_mistakes(LABELS, PROBABILITIES, 10).tolist() == [1, 3]
    assert most_confident_mistakes(LABELS, PROBABILITIES, 1).tolist() == [1]


@pytest.mark.parametrize("mistakes_shown", [2, 1])
def test_misclassified_grid_is_a_valid_png(tmp_path, mistakes_shown):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    out = tmp_path / "misclassified.png"
    shown = plot_misclassified(images, LABELS, PROBABILITIES, CLASSES, mistakes_shown, out, dpi=100)
    assert shown == mistakes_shown
    image = assert_png(out)
    # One row of 1.8 inches + a 0.5 inch title band, at least 4 inches wide, at 100 dpi.
    assert image.size == (400, 230)


def test_misclassified_grid_without_mistakes_still_writes_a_png(tmp_path):
    out = tmp_path / "misclassified.png"
    perfect = np.eye(4)[LABELS]
    assert (
        plot_misclassified(np.zeros((5, 32, 32, 3), np.uint8), LABELS, perfect, CLASSES, 25, out, dpi=100)
        == 0
    )
    assert out.stat().st_size > 0


def test_evaluate_params_are_checked():
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["evaluate"]["top_k"] = 0
    with pytest.raises(StageError, match=r"evaluate\.top_k = 0 is not accepted; expected an integer from 1"):
        validate_params(params)


def test_top_k_above_the_number_of_classes_is_a_one_line_error(tmp_path):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["evaluate"]["top_k"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    save_split(tmp_path / "test.npz", np.zeros((5, 32, 32, 3), np.uint8), LABELS)
    (tmp_path / "classes.json").write_text('["a", "b", "c", "d"]')
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-m", "stages.evaluate", "model.keras", ".", "out"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: params.yaml: evaluate.top_k = 5 is more than the 4 classes"
