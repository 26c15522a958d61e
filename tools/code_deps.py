"""Which project files a stage's command imports, read from the source with `ast` (nothing is run), and
`make deps` (`python -m tools.code_deps`), which writes them into dvc.yaml as each stage's code deps."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import yaml

PACKAGES = ("stages", "classifier")


def module_file(project: Path, module: str) -> Path | None:
    """The project file of a dotted module name, or None for a module from outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = project / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function: `from a import b` counts as `a`
    and, where b is a module itself, `a.b`."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def project_imports(project: Path, module: str) -> set[Path]:
    """The project files that running `python -m <module>` imports, directly or through each other, the
    packages' __init__.py files included unless they hold only a docstring (nothing there can change what a
    stage does, and every dep is a column of `dvc exp show`); paths relative to `project`."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            path = module_file(project, ".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_modules(path))
    return {path.relative_to(project) for path in seen if not _docstring_only(path)}


def _docstring_only(path: Path) -> bool:
    """An __init__.py whose whole body is its docstring (or nothing)."""
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return len(body) == 0 or (
        len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    )


# ---------------------------------------------------------------------------------------------
# `make deps`: write each stage's code deps into dvc.yaml from the imports.
# ---------------------------------------------------------------------------------------------

CODE_DEP = re.compile(r"^\s+- (stages|classifier)/\S+\.py\s*$")


def stage_module(command: str) -> str:
    """`python -m stages.train ...` -> `stages.train`."""
    found = re.match(r"python -m (stages\.\w+)\b", command)
    if found is None:
        raise SystemExit(
            f"error: dvc.yaml: a stage's cmd does not start with `python -m stages.<name>`: {command!r}"
        )
    return found.group(1)


def code_deps_of(project: Path, module: str) -> list[str]:
    """The stage's own script first, then the library files it imports, sorted."""
    stage_file = Path(*module.split(".")).with_suffix(".py")
    others = sorted(str(path) for path in project_imports(project, module) if path != stage_file)
    return [str(stage_file), *others]


def rewrite_dvc_yaml(project: Path) -> str:
    """dvc.yaml with each stage's code deps replaced by what its command imports; comments and every
    other line are kept as they are (the file is edited as text, not re-dumped)."""
    text = (project / "dvc.yaml").read_text(encoding="utf-8")
    stages = yaml.safe_load(text)["stages"]
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage: str | None = None
    in_deps = False
    for line in lines:
        header = re.match(r"^  (\w+):\s*$", line)
        if header and header.group(1) in stages:
            stage, in_deps = header.group(1), False
        if stage is not None and re.match(r"^    deps:\s*$", line):
            in_deps = True
            out.append(line)
            indent = "      - "
            out.extend(
                f"{indent}{dep}\n" for dep in code_deps_of(project, stage_module(stages[stage]["cmd"]))
            )
            continue
        if in_deps and CODE_DEP.match(line):
            continue  # replaced above
        if in_deps and not line.startswith("      "):
            in_deps = False
        out.append(line)
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write each dvc.yaml stage's code deps from its imports.")
    parser.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml is not up to date")
    args = parser.parse_args()
    project = Path(__file__).resolve().parent.parent
    new = rewrite_dvc_yaml(project)
    old = (project / "dvc.yaml").read_text(encoding="utf-8")
    if args.check:
        if new != old:
            raise SystemExit("error: dvc.yaml's code deps differ from the stages' imports: run `make deps`")
        return
    if new != old:
        temporary = project / "dvc.yaml.tmp"
        temporary.write_text(new, encoding="utf-8")
        temporary.replace(project / "dvc.yaml")
        print("dvc.yaml: code deps updated")
    else:
        print("dvc.yaml: code deps already up to date")


if __name__ == "__main__":
    main()
