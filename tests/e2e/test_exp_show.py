"""End to end: a plain `dvc exp show` in a 160-column terminal shows the headline numbers first.

dvc.yaml's top-level `metrics:` sets the order of exp show's metric columns (they come before every
param and dep column). Its first entry, metrics/evaluate/metrics.json, makes the test accuracy the first
metric column. Two views are checked:
- `dvc exp show` in a terminal: DVC renders the whole table (up to 1,024 columns) into its pager,
  `less -S`, which shows each line's first 160 columns. The headline metrics are there, in full;
- `dvc exp show --no-pager` (or piped): DVC squeezes the table into 160 columns. It collapses every
  column but the first of each kind (metric, param, dep) to "…", and still reserves one character per
  column, collapsed or not (rich's Table._extra_width): with ~150 columns (metrics, ~50 params, ~50
  deps) about 10 characters are left for the cells. So the first metric column, the test accuracy, is
  the only metric there, and its name may be cut ("ac…"): no order of dvc.yaml's metrics can do more.
Per-class scores are out of the default view; `dvc metrics show <file>` still finds them.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, sh, tool_env

pytestmark = pytest.mark.e2e
TIMEOUT = 900  # seconds a test may take: may build the shared pipeline

WIDTH = 160
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def project(tmp_path_factory, pipeline) -> Path:
    """The pipeline on tiny data (a copy of the shared run), saved as an experiment named 'tiny' (so exp show
    has 3 rows): every stage is up to date, so `dvc exp run` only records the results."""
    repo = copy_repo(pipeline, tmp_path_factory.mktemp("exp_show") / "repo")
    sh(repo, "dvc", "exp", "run", "-n", "tiny")
    return repo


def headline_files(repo: Path) -> list[str]:
    """The first two top-level metrics files of dvc.yaml: the test scores, then the best epoch's."""
    return yaml.safe_load((repo / "dvc.yaml").read_text())["metrics"][:2]


def header(table: str) -> tuple[str, list[str]]:
    """The header line of a table as exp show prints it (between its first two rules), and its cells."""
    lines = [line.rstrip() for line in table.splitlines()]
    rules = [i for i, line in enumerate(lines) if line.strip() and set(line.strip()) == {"─"}]
    assert len(rules) >= 2, table
    line = lines[rules[0] + 1]
    return line, re.split(r"\s{2,}", line.strip())


def first_metric(names: list[str]) -> str:
    """The first column after Experiment, Created, State and Executor (any of them shortened to "Cr…")."""
    leading = ("Experiment", "Created", "State", "Executor")
    return next(
        n for n in names[1:] if n == "…" or not any(full.startswith(n.rstrip("…")) for full in leading)
    )


def cell(table: str, line: str, column: str, row_name: str) -> str:
    """A right-aligned (metric) cell of the row holding `row_name`: the word ending where the column's name
    ends in the header."""
    end = re.search(rf"(?<!\S){re.escape(column)}(?!\S)", line).end()
    [row] = [r for r in table.splitlines() if row_name in r]
    return row[:end].split()[-1]


def exp_show_in_a_terminal(repo: Path, tmp_path: Path, width: int = WIDTH) -> str:
    """Plain `dvc exp show` on a `width`-column pseudo-terminal; what its pager shows (as less -S would:
    the first `width` characters of each line). DVC_PAGER is a script that keeps the page it is given."""
    page = tmp_path / "page.txt"
    pager = tmp_path / "pager.sh"
    pager.write_text(f'#!/bin/sh\ncp "$1" "{page}"\n')
    pager.chmod(0o755)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, width, 0, 0))
    env = {**tool_env(), "COLUMNS": str(width), "DVC_PAGER": str(pager)}
    process = subprocess.Popen(
        ["dvc", "exp", "show"], cwd=repo, env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    printed, deadline = b"", time.monotonic() + 300
    while time.monotonic() < deadline:  # drain the terminal, so that the process never blocks on it
        if select.select([master], [], [], 1)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process has exited and the terminal is closed
                break
            if not data:
                break
            printed += data
        elif process.poll() is not None:
            break
    os.close(master)
    assert process.wait(timeout=60) == 0, printed.decode(errors="replace")
    assert page.exists(), f"dvc exp show did not use its pager:\n{printed.decode(errors='replace')}"
    return "\n".join(ANSI.sub("", line)[:width] for line in page.read_text().splitlines())


def test_no_pager_at_160_columns_without_code_deps_the_first_metric_column_is_the_test_accuracy(project):
    env = {**tool_env(), "COLUMNS": str(WIDTH)}
    result = subprocess.run(
        # The code deps (45 columns) alone squeeze every cell away at 160 columns: docs/metrics-and-plots.md.
        ["dvc", "exp", "show", "--no-pager", "--drop", "(classifier|stages)/.*"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert max(len(line) for line in table.splitlines()) <= WIDTH, table
    line, names = header(table)
    column = first_metric(names)  # the one metric column DVC never collapses; its name may be cut
    assert column.rstrip("…") and "accuracy".startswith(column.rstrip("…")), table
    test = json.loads((project / "metrics/evaluate/metrics.json").read_text())["accuracy"]
    shown = cell(table, line, column, "└")
    assert f"{test:.5g}".startswith(shown.rstrip("…")), (shown, test, table)  # DVC shows 5 digits


def test_in_a_160_column_terminal_the_headline_metrics_come_first(project, tmp_path):
    table = exp_show_in_a_terminal(project, tmp_path)
    line, names = header(table)
    wanted = ["accuracy", "loss", "top_3_accuracy"]
    if "metrics/train/best.json" in headline_files(project):
        assert (project / "metrics/train/best.json").exists(), "dvc.yaml lists best.json but train wrote none"
        wanted.append("best.val_accuracy")
    assert [name for name in names if name in wanted] == wanted, table
    test = json.loads((project / "metrics/evaluate/metrics.json").read_text())["accuracy"]
    assert float(cell(table, line, "accuracy", "└")) == pytest.approx(test, rel=1e-4)
    # Data counts and machine facts come after the headline numbers; per-class scores not at all.
    later = [
        i for i, name in enumerate(names) if re.match(r"classes|\w+_images|ignored_files|environment\.", name)
    ]
    assert all(i > names.index(wanted[-1]) for i in later), table
    assert "per_class" not in table, table


def test_per_class_scores_and_data_counts_stay_in_their_files(project):
    default = json.loads(sh(project, "dvc", "metrics", "show", "--json").stdout)[""]["data"]
    assert list(default)[0] == "metrics/evaluate/metrics.json"  # the headline numbers come first
    assert "metrics/evaluate/per_class.json" not in default  # 3 numbers per class: out of the default view
    assert "metrics/preprocess.json" in default  # the data counts: listed, after the scores
    shown = sh(project, "dvc", "metrics", "show", "metrics/evaluate/per_class.json").stdout
    assert "per_class.airplane.recall" in shown and "per_class.bird.f1" in shown
    counts = sh(project, "dvc", "metrics", "show", "metrics/preprocess.json").stdout
    assert "train_images" in counts and "test_images" in counts
