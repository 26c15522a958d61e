"""Which project files a stage's command imports, read from the source with `ast` (nothing is run)."""

from __future__ import annotations

import ast
from pathlib import Path

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
    """The project files that running `python -m <module>` imports, directly or through each other,
    the packages' __init__.py files included; paths relative to `project`."""
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
    return {path.relative_to(project) for path in seen}
