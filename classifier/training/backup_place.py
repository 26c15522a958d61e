"""Where the train stage keeps its backups: the main repository's `.dvc/tmp/train-backup`, wherever the
stage runs.

`dvc exp run --queue` (then `dvc queue start`) and `dvc exp run --temp` run the pipeline in a copy of the
repository under the main one's `.dvc/tmp/exps/<tmpdir>/`, which DVC deletes after a successful run and
which the next run of the same experiment never sees: a backup kept in the copy is lost to it. Kept in
the main repository, every route (workspace, temporary copy, queue worker) finds the same backups.

How the main repository is found:
1. DVC_ROOT, which DVC sets for every stage command: the repository's root in the workspace, and, for
   queued and --temp runs, the main repository's root on purpose (dvc/repo/experiments/queue/base.py
   writes it into the run's environment: "point to the parent DVC repo root (and not an executor tempdir
   root)"). It is trusted only when the stage runs inside it, so a value inherited from elsewhere (a
   stage that runs another project's pipeline) is ignored.
2. Otherwise (the stage run by hand): the layout. A directory under `<root>/.dvc/tmp/exps/` is a copy of
   `<root>`; else the nearest directory above with a `.dvc` folder; else the current directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_DIR = Path(".dvc/tmp/train-backup")  # relative to the main repository's root
EXPS = (".dvc", "tmp", "exps")  # where DVC puts the temporary copies (dvc/repo/experiments/utils.py)


def main_root(cwd: Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """The root of the repository whose experiments these are (see the module's docstring)."""
    here = (cwd or Path.cwd()).resolve()
    if declared := environ.get("DVC_ROOT"):
        root = Path(declared).resolve()
        if root == here or root in here.parents:
            return root
    parts = here.parts
    for i in range(len(parts) - len(EXPS)):
        if parts[i : i + len(EXPS)] == EXPS:
            return Path(*parts[:i])
    return next((folder for folder in (here, *here.parents) if (folder / ".dvc").is_dir()), here)


def default_dir(cwd: Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    return main_root(cwd, environ) / DEFAULT_DIR


def copies_dirs(root: Path) -> list[Path]:
    """Backup folders left in temporary copies by earlier versions of this stage, which kept them there."""
    exps = root.joinpath(*EXPS)
    return sorted(exps.glob(f"*/{DEFAULT_DIR}")) + sorted(exps.glob(f"*/*/{DEFAULT_DIR}"))
