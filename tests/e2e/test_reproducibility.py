"""Same params, same bytes: two repos build identical models, and a change reruns only what uses it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

from conftest import copy_repo, lock_without_timings, set_params, sh, tool_env

pytestmark = pytest.mark.e2e
TIMEOUT = 900  # seconds a test may take: the shared pipeline, then one more

ALL = {"download", "preprocess", "build_and_compile", "train", "evaluate", "plot", "export"}
# Changing any key of a group makes `dvc repro` rerun at most these stages (the README table).
RERUNS = {
    "download": ALL,
    "seed": ALL - {"download"},
    "preprocess": ALL - {"download"},
    "model": {"build_and_compile", "train", "evaluate", "plot", "export"},
    "train": {"train", "evaluate", "plot", "export"},
    "evaluate": {"evaluate", "plot"},
    "plot": {"plot"},
    "export": {"export"},
}
# The stages whose own params change (what `dvc status` reports); by default the group's first stage.
FIRST_STAGE = {
    "download": "download",
    "seed": "preprocess",
    "preprocess": "preprocess",
    "model": "build_and_compile",
    "train": "train",
    "evaluate": "evaluate",
    "plot": "plot",
    "export": "export",
}
DIRECT = {
    "seed": {"preprocess", "build_and_compile", "train", "export"},
    "preprocess.image_size": {"preprocess", "build_and_compile"},
    "train.threads": {"train", "evaluate", "export"},
    # build_and_compile reads the whole model section (its output stays the same bytes); train wraps the model
    "model.flip_average": {"build_and_compile", "train"},
    "model.shift_average": {"build_and_compile", "train"},
}


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory, pipeline: Path, fresh_project: Path) -> list[Path]:
    """Two independent repos that ran the whole pipeline on the same archive with the same params: a copy of
    the shared pipeline, and a copy of the project from before it ran (no cache, no run cache), run again in
    another folder at another time (their bytes must not care)."""
    first = copy_repo(pipeline, tmp_path_factory.mktemp("first") / "project")
    second = copy_repo(fresh_project, tmp_path_factory.mktemp("second") / "project")
    assert not (second / "dvc.lock").exists() and not (second / ".dvc/cache/runs").exists(), "nothing ran yet"
    run = subprocess.run(["dvc", "repro"], cwd=second, env=tool_env(), check=False, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout
    assert run.stdout.count("Running stage") == len(ALL), run.stdout
    return [first, second]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_repos_train_byte_identical_models_and_equal_metrics(twins: list[Path]) -> None:
    first, second = twins
    for output in (
        "models/compiled.keras",
        "models/model.keras",
        "data/prepared/train.npz",
        "data/prepared/validation.npz",
        "metrics/plots/loss.png",
    ):
        assert digest(first / output) == digest(second / output), output
    for metrics in ("metrics/train/metrics.json", "metrics/evaluate/metrics.json"):
        assert json.loads((first / metrics).read_text()) == json.loads((second / metrics).read_text())
    # The lock file records the hash of every output and dependency: identical means all of them are,
    # except how long things took (metrics/timing/), which is there and may differ.
    assert lock_without_timings(first) == lock_without_timings(second)
    assert json.loads((first / "metrics/timing/train.json").read_text())["seconds"] > 0
    # And the training really moved the weights: not two copies of an untrained model.
    assert digest(first / "models/model.keras") != digest(first / "models/compiled.keras")


def downstream(repo: Path) -> dict[str, set[str]]:
    """{stage: every stage after it} from DVC's own DAG (`dvc dag --dot`)."""
    edges = re.findall(r'"(\w+)" -> "(\w+)"', sh(repo, "dvc", "dag", "--dot").stdout)
    after: dict[str, set[str]] = {}
    for stage in ALL:
        todo, seen = [stage], set()
        while todo:
            node = todo.pop()
            for a, b in edges:
                if a == node and b not in seen:
                    seen.add(b)
                    todo.append(b)
        after[stage] = seen
    return after


def leaves(node: dict, where: str = "") -> dict[str, object]:
    found: dict[str, object] = {}
    for key, value in node.items():
        found |= leaves(value, f"{where}{key}.") if isinstance(value, dict) else {f"{where}{key}": value}
    return found


def another(value: object) -> object:
    """A different value of the same kind; `dvc status` compares values, it does not validate them."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return value + [1]
    return f"{value}-changed"


def changed_stages(repo: Path) -> set[str]:
    """The stages `dvc status --json` lists, asked in-process (0.2 s instead of 1 s per call)."""
    with contextlib.chdir(repo), Repo() as dvc:  # stage names are relative to the working directory
        return set(dvc.status())


def test_each_param_reruns_only_the_stages_that_use_it(twins: list[Path]) -> None:
    """Change every key of params.yaml in turn in a built project and ask DVC what changed."""
    repo = twins[0]
    original = (repo / "params.yaml").read_text()
    after = downstream(repo)
    seen_groups = set()
    for key, value in leaves(yaml.safe_load(original)).items():
        group = key.split(".")[0]
        assert group in RERUNS, f"new params group '{group}': add it to RERUNS and to the README table"
        seen_groups.add(group)
        set_params(repo, {key: another(value)})
        try:
            changed = changed_stages(repo)
            if key == "train.threads":  # the command line says the same
                assert set(json.loads(sh(repo, "dvc", "status", "--json").stdout)) == changed
        finally:
            (repo / "params.yaml").write_text(original)
        assert changed == DIRECT.get(key, {FIRST_STAGE[group]}), key
        assert changed | {s for stage in changed for s in after[stage]} == RERUNS[group], key
    assert seen_groups == set(RERUNS)
    assert json.loads(sh(repo, "dvc", "status", "--json").stdout) == {}


def test_same_bytes_stop_the_rerun_early(twins: list[Path], binary_archive: Path) -> None:
    """A download param changes but the archive's bytes do not: only download reruns."""
    repo = twins[0]
    original = (repo / "params.yaml").read_text()
    md5 = "md5:" + hashlib.md5(binary_archive.read_bytes()).hexdigest()
    set_params(repo, {"download.checksum": md5})
    try:
        output = sh(repo, "dvc", "repro").stdout
        assert "Running stage 'download'" in output
        assert "Running stage" not in output.replace("Running stage 'download'", "")
        assert "Stage 'preprocess' didn't change, skipping" in output
    finally:
        (repo / "params.yaml").write_text(original)
        sh(repo, "dvc", "repro")  # restored from DVC's run cache, nothing retrains
    assert json.loads(sh(repo, "dvc", "status", "--json").stdout) == {}
