"""Run a named recipe as a DVC experiment named after its file.

    python recipes/run.py recipes/better-mlp.yaml                 # train it now (dvc exp run)
    python recipes/run.py recipes/better-mlp.yaml --queue         # or queue it; any `dvc exp run` option works
    python recipes/run.py recipes/better-mlp.yaml -S train.epochs=5   # your -S come last, so they win

A recipe file holds only the params it changes, nested as in params.yaml. They are checked against the
params schema first (a typo fails here, not an hour into training), then passed on as
`dvc exp run --name <file name> -S key=value ...`: params.yaml itself is not edited.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from classifier.core.dotted_keys import flatten, set_dotted  # noqa: E402
from classifier.core.errors import StageError, run  # noqa: E402
from classifier.core.params import check_combinations, load_params, validate_params  # noqa: E402


def apply(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `params` with the recipe's dotted keys set."""
    merged = json.loads(json.dumps(params))
    for dotted, value in overrides.items():
        set_dotted(merged, dotted, value)
    return merged


def read_recipe(path: Path) -> dict[str, Any]:
    """The recipe's params as dotted keys, after checking them merged into params.yaml."""
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: no such recipe file (see recipes/ for the committed ones)") from None
    if not isinstance(recipe, dict) or not recipe:
        raise StageError(f"{path}: expected a mapping of params to change, as in params.yaml; got {recipe!r}")
    overrides = flatten(recipe)
    merged = apply(load_params().model_dump(), overrides)
    try:
        check_combinations(validate_params(merged))
    except StageError as error:
        raise StageError(f"{path}: {error}".replace("params.yaml: ", "")) from None
    return overrides


def exp_run_command(name: str, overrides: dict[str, Any], extra: list[str]) -> list[str]:
    """`dvc exp run --name NAME -S key=value ...`; values are written as YAML, which is how DVC reads them."""
    command = ["dvc", "exp", "run", "--name", name]
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        command += ["-S", f"{key}={text}"]
    return command + extra


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    path = Path(sys.argv[1])
    command = exp_run_command(path.stem, read_recipe(path), sys.argv[2:])
    print("recipe:", shlex.join(command), flush=True)
    sys.exit(subprocess.call(command))


if __name__ == "__main__":
    run(main)
