"""Named recipes (recipes/*.yaml) and the command that runs one as a DVC experiment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from classifier.core.dotted_keys import flatten
from classifier.core.errors import StageError
from classifier.core.params import load_params

from conftest import PROJECT, copy_repo, sh, tool_env

sys.path.insert(0, str(PROJECT / "recipes"))
import run as recipe  # noqa: E402  (recipes/run.py)

RECIPES = sorted((PROJECT / "recipes").glob("*.yaml"))


def test_the_committed_recipes() -> None:
    assert [path.name for path in RECIPES] == [
        "better-mlp.yaml", "mixup-mlp-49k-tta.yaml", "mixup-mlp-49k.yaml", "mixup-mlp.yaml",
    ]  # fmt: skip


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_is_valid_and_changes_only_what_it_names(path: Path) -> None:
    overrides = recipe.read_recipe(path)
    defaults = flatten(load_params(PROJECT / "params.yaml").model_dump())
    assert set(overrides) <= set(defaults), "every key exists in params.yaml"
    assert all(overrides[key] != defaults[key] for key in overrides), "no key repeats its default"
    # A recipe is about training: it may hold out another share for validation, but never changes where
    # the data comes from, how images are decoded, or what evaluate and plot report.
    data_keys = [
        key for key in overrides if key.startswith(("download.", "preprocess.", "evaluate.", "plot."))
    ]
    assert data_keys in ([], ["preprocess.validation"])


def test_better_mlp_is_an_mlp_only() -> None:
    overrides = recipe.read_recipe(PROJECT / "recipes" / "better-mlp.yaml")
    assert overrides["model.hidden_units"] == [1024, 1024, 1024]
    assert overrides["train.augment.flip"] is True and overrides["train.augment.crop_padding"] == 3


def test_mixup_mlp_is_the_better_mlp_trained_longer_with_mixup() -> None:
    """The same model (docs/better-recipe.md compares them): only the batch, rate, epochs, MixUp and the
    flip average differ."""
    better = recipe.read_recipe(PROJECT / "recipes" / "better-mlp.yaml")
    mixup = recipe.read_recipe(PROJECT / "recipes" / "mixup-mlp.yaml")
    changed = {key: value for key, value in mixup.items() if better.get(key) != value}
    assert changed == {
        "model.learning_rate": 0.004, "model.flip_average": True, "train.batch_size": 512,
        "train.epochs": 400, "train.augment.mixup": 0.2,
    }  # fmt: skip
    assert set(better) <= set(mixup)


def test_mixup_mlp_49k_trades_validation_images_for_training_images() -> None:
    """The same training as mixup-mlp on 98% of the training split instead of 90%, with 10% fewer epochs so
    that a run sees about as many images (docs/better-recipe.md)."""
    mixup = recipe.read_recipe(PROJECT / "recipes" / "mixup-mlp.yaml")
    more_data = recipe.read_recipe(PROJECT / "recipes" / "mixup-mlp-49k.yaml")
    changed = {key: value for key, value in more_data.items() if mixup.get(key) != value}
    assert changed == {"preprocess.validation": 0.02, "train.epochs": 360}
    assert set(mixup) <= set(more_data)
    seen = {name: (1 - params.get("preprocess.validation", 0.1)) * params["train.epochs"]
            for name, params in (("mixup", mixup), ("more_data", more_data))}  # fmt: skip
    assert seen["more_data"] <= seen["mixup"], "no more images seen per run, so no more training time"


def test_mixup_mlp_49k_tta_trains_as_mixup_mlp_49k_and_averages_over_shifted_views() -> None:
    """Test-time augmentation only: the same training, so the same trained weights (docs/better-recipe.md
    compares the two on the same runs)."""
    more_data = recipe.read_recipe(PROJECT / "recipes" / "mixup-mlp-49k.yaml")
    tta = recipe.read_recipe(PROJECT / "recipes" / "mixup-mlp-49k-tta.yaml")
    assert {key: value for key, value in tta.items() if more_data.get(key) != value} == {
        "model.shift_average": 2
    }
    assert set(more_data) <= set(tta)


def test_command_passes_every_value_as_dvc_reads_it() -> None:
    overrides = {"model.hidden_units": [8, 8], "train.augment.flip": True, "train.early_stopping": None,
                 "model.optimizer": "adamw", "model.learning_rate": 0.002}  # fmt: skip
    command = recipe.exp_run_command("mine", overrides, ["--queue"])
    assert command[:5] == ["dvc", "exp", "run", "--name", "mine"] and command[-1] == "--queue"
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "-S"]
    parsed = {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}
    assert parsed == overrides


@pytest.mark.parametrize(
    "content, message",
    [
        ("model:\n  dropuot: 0.1\n", "unknown key 'model.dropuot'; did you mean 'model.dropout'?"),
        ("model:\n  dropout: 2\n", "model.dropout = 2 is not accepted; expected a number >= 0.0 and <= 0.95"),
        ("train:\n  warmup_epochs: 3\n", "train.warmup_epochs = 3 needs train.lr_schedule: cosine"),
        ("[1, 2]\n", "expected a mapping of params to change"),
    ],
)
def test_a_bad_recipe_fails_before_dvc_runs(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(content)
    with pytest.raises(StageError) as error:
        recipe.read_recipe(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    result = subprocess.run([sys.executable, str(PROJECT / "recipes" / "run.py"), str(path)], cwd=PROJECT,
                            env=tool_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert "recipe: dvc exp run" not in result.stdout, "dvc never started"


@pytest.mark.e2e
@pytest.mark.timeout(900)  # may build the shared pipeline
def test_recipe_runs_as_a_named_experiment(pipeline: Path, tmp_path: Path) -> None:
    # A copy of the shared pipeline, its run committed: the experiment starts from the cached data.
    repo = copy_repo(pipeline, tmp_path / "project")
    shutil.copytree(PROJECT / "recipes", repo / "recipes", ignore=shutil.ignore_patterns("__pycache__"))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "pipeline run, recipes")
    # Small enough for a test: the user's -S come after the recipe's and win; like any other argument of
    # dvc exp run, a target stage passes through (evaluate: the metrics checked here, no charts or exports).
    result = sh(repo, sys.executable, "recipes/run.py", "recipes/better-mlp.yaml",
                "-S", "train.epochs=2", "-S", "model.hidden_units=[32,32,32]", "evaluate")  # fmt: skip
    assert "recipe: dvc exp run --name better-mlp" in result.stdout
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])]
    runs = {exp["name"]: exp["revs"][0]["data"] for exp in experiments}
    params = runs["better-mlp"]["params"]["params.yaml"]["data"]
    assert params["model"]["hidden_units"] == [32, 32, 32] and params["train"]["epochs"] == 2
    assert params["model"]["normalization"] == "batch" and params["train"]["augment"]["crop_padding"] == 3
    metrics = runs["better-mlp"]["metrics"]["metrics/evaluate/metrics.json"]["data"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
