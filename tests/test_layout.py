"""The project's shape: stages/ holds the DVC stages only, modules stay small, and each stage's code deps in
dvc.yaml are exactly the project files its command imports (so editing a file reruns only the stages
that run it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tools.code_deps import imported_modules, project_imports, rewrite_dvc_yaml

from conftest import PROJECT, SLOWEST_FIRST

STAGES = ["download", "preprocess", "build_and_compile", "train", "evaluate", "plot", "export"]
MAX_STAGE_LINES = 120
MAX_LIBRARY_LINES = 300


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def code_deps(stage: dict) -> set[Path]:
    """The deps of a stage that are project code (.py files under stages/ or classifier/)."""
    return {Path(dep) for dep in stage["deps"] if re.match(r"(stages|classifier)/.*\.py$", dep)}


def test_stages_folder_holds_the_seven_stages_only() -> None:
    # __init__.py only makes a signal during a stage's imports end it with one line (classifier/core/errors.py)
    assert sorted(path.stem for path in (PROJECT / "stages").glob("*.py")) == sorted(["__init__", *STAGES])
    assert list(dvc_stages()) == STAGES


@pytest.mark.parametrize("folder, limit", [("stages", MAX_STAGE_LINES), ("classifier", MAX_LIBRARY_LINES)])
def test_modules_stay_short(folder: str, limit: int) -> None:
    files = (PROJECT / folder).rglob("*.py")
    long = {str(p.relative_to(PROJECT)): n for p in files if (n := len(p.read_text().splitlines())) > limit}
    assert not long, f"{folder}/ modules over {limit} lines: {long}"


@pytest.mark.parametrize("name", STAGES)
def test_code_deps_are_exactly_the_files_the_stage_imports(name: str) -> None:
    stage = dvc_stages()[name]
    module = re.match(r"python -m (stages\.\w+)\b", stage["cmd"]).group(1)
    imported = project_imports(PROJECT, module)
    listed = code_deps(stage)
    assert not listed - imported, (
        f"{name}: dvc.yaml lists files the stage does not import: {listed - imported}"
    )
    assert not imported - listed, f"{name}: dvc.yaml misses files the stage imports: {imported - listed}"


def test_dvc_yaml_is_what_make_deps_writes() -> None:
    # The deps test above names what is wrong; this one says the fix is one command.
    assert rewrite_dvc_yaml(PROJECT) == (PROJECT / "dvc.yaml").read_text(), (
        "dvc.yaml is stale: run `make deps`"
    )


def test_the_library_is_grouped_by_concern() -> None:
    # A folder answers "where do I change X": beside the subpackages sit only the user commands and the one
    # module of other libraries' private APIs; the TensorFlow-free folders stay free of it (download and
    # preprocess never load it; compat.py imports what each entry needs only when called).
    loose = sorted(p.name for p in (PROJECT / "classifier").glob("*.py") if p.name != "__init__.py")
    assert loose == ["compat.py", "predict.py", "seeds_report.py"]
    for folder in ("core", "data", "reporting"):
        for path in (PROJECT / "classifier" / folder).glob("*.py"):
            heavy = {m for m in imported_modules(path) if m.split(".")[0] in {"tensorflow", "keras"}}
            assert not heavy, f"{path.relative_to(PROJECT)} imports {sorted(heavy)}"


def test_the_import_reader_sees_imports_inside_functions(tmp_path: Path) -> None:
    # The deps test above can fail: a lazy import inside a function counts as much as one at the top.
    (tmp_path / "stages").mkdir()
    (tmp_path / "classifier").mkdir()
    (tmp_path / "stages" / "job.py").write_text(
        "import os\n\ndef main():\n    from classifier.extra import thing\n"
    )
    (tmp_path / "classifier" / "extra.py").write_text("from classifier import helper\nthing = 1\n")
    (tmp_path / "classifier" / "helper.py").write_text("")
    assert imported_modules(tmp_path / "stages" / "job.py") == {
        "os",
        "classifier.extra",
        "classifier.extra.thing",
    }
    found = project_imports(tmp_path, "stages.job")
    assert found == {Path("stages/job.py"), Path("classifier/extra.py"), Path("classifier/helper.py")}


def test_no_stage_but_plot_imports_the_charts_and_no_data_stage_the_model_files() -> None:
    # What the issue promised users: recolouring a chart reruns plot alone; editing how models are saved
    # never reruns the download or preprocess stage.
    users = {name: project_imports(PROJECT, f"stages.{name}") for name in STAGES}
    assert [name for name in STAGES if Path("classifier/reporting/charts.py") in users[name]] == ["plot"]
    assert not {"download", "preprocess"} & {
        n for n in STAGES if Path("classifier/model/saving.py") in users[n]
    }
    no_tensorflow = [n for n in STAGES if not any("runtime.py" in str(p) for p in users[n])]
    assert no_tensorflow == ["download", "preprocess", "plot"]


def test_test_files_have_unique_names() -> None:
    # pytest imports test modules by file name: two test_x.py in different folders collide.
    names = [path.name for path in (PROJECT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_the_slowest_first_list_names_test_modules_that_exist() -> None:
    assert [name for name in SLOWEST_FIRST if not (PROJECT / "tests" / name).is_file()] == []
    assert len(set(SLOWEST_FIRST)) == len(SLOWEST_FIRST)
