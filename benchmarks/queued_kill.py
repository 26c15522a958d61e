"""What a SIGKILL at 90% of a queued experiment costs: one throw-away copy of the project runs the
experiment uninterrupted (`dvc exp run --queue train`, `dvc queue start -j 1`), another runs it, kills the
train stage's process group once it has logged 90% of the epochs, and queues the same experiment again.
Prints the wall times, where the re-queued run started, and the backups left anywhere in the repository.

Usage: python benchmarks/queued_kill.py [--epochs 100] [--archive A] [--recipe R] [--code DIR] [--keep DIR]
(--archive: the images, default tiny generated ones, e.g. ../shared/data/cifar10-jpg-mini.tar.gz;
--recipe: a recipe's params, e.g. recipes/better-mlp.yaml, --epochs still wins;
--code: the project tree to copy, default this one; point it at an older checkout to compare.)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

HERE = Path(__file__).resolve().parent.parent


def status(repo: Path, name: str) -> str | None:
    shown = subprocess.run(
        ["dvc", "queue", "status"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split() for line in shown.splitlines()]
    return next((row[-1] for row in rows if len(row) >= 4 and row[1] == name), None)


def wait_status(repo: Path, name: str, wanted: set[str]) -> str:
    while (state := status(repo, name)) not in wanted:
        time.sleep(0.5)
    return state


def kill_train_at(repo: Path, epochs: int) -> None:
    """SIGKILL the train stage's process group once it has logged `epochs` epochs."""
    while True:
        for process in psutil.process_iter():
            try:
                if "stages.train" not in process.cmdline() or not Path(process.cwd()).is_relative_to(repo):
                    continue
                tsv = Path(process.cwd()) / "metrics/train/plots/metrics/train/loss.tsv"
                if tsv.exists() and len(tsv.read_text().splitlines()) - 1 >= epochs:
                    os.killpg(os.getpgid(process.pid), signal.SIGKILL)
                    psutil.wait_procs([process], timeout=30)
                    return
            except (psutil.Error, OSError):
                pass
        time.sleep(0.02)


def run_queued(repo: Path, name: str, kill_at: int | None = None) -> tuple[float, str]:
    """Queue `name` and start a worker; the seconds until it succeeded (or was killed) and its log."""
    subprocess.run(["dvc", "exp", "run", "--queue", "-n", name, "train"], cwd=repo, check=True,
                   capture_output=True)  # fmt: skip
    start = time.monotonic()
    # The worker keeps the stdout it was given: never a pipe we would wait on.
    subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=repo, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    if kill_at:
        kill_train_at(repo, kill_at)
        return time.monotonic() - start, ""
    state = wait_status(repo, name, {"Success", "Failed"})
    seconds = time.monotonic() - start
    log = subprocess.run(
        ["dvc", "queue", "logs", name], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert state == "Success", log
    return seconds, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--archive", type=Path, help="the images (default: tiny generated ones)")
    parser.add_argument("--recipe", type=Path, help="a recipe whose params the runs use")
    parser.add_argument(
        "--code", type=Path, default=HERE, help="the project tree to copy (default: this one)"
    )
    parser.add_argument(
        "--keep", type=Path, help="work here and keep the copies (default: a temporary folder)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from classifier.core.dotted_keys import flatten

    params = flatten(yaml.safe_load(args.recipe.read_text())) if args.recipe else {}
    params["train.epochs"] = args.epochs
    for module in [name for name in sys.modules if name.split(".")[0] == "classifier"]:
        del sys.modules[module]  # --code's tests import their own classifier package, maybe an older layout
    sys.path[:0] = [str(args.code / "tests"), str(args.code)]
    from conftest import make_cifar_binary_archive, make_project, sh, tool_env

    os.environ.update(tool_env())  # dvc and the stages from this venv, no telemetry
    out = args.keep or Path(tempfile.mkdtemp(prefix="queued-kill-"))
    archive = args.archive.resolve() if args.archive else make_cifar_binary_archive(out / "archive.tar.gz")
    base = make_project(out / "base", archive, params)
    sh(base, "dvc", "repro", "build_and_compile")
    sh(base, "git", "add", "-A")
    sh(base, "git", "commit", "-qm", "built")
    reference, killed = (Path(shutil.copytree(base, out / name, symlinks=True)) for name in ("ref", "kill"))
    whole, _ = run_queued(reference, "q0")
    at = int(args.epochs * 0.9)
    until_kill, _ = run_queued(killed, "q1", kill_at=at)
    again, log = run_queued(killed, "q2")
    first = next((line for line in log.splitlines() if line.startswith("Epoch ")), None)
    left = sorted(str(p.relative_to(killed)) for p in killed.rglob("train-backup/*/epoch-*"))
    print(f"uninterrupted: {whole:.1f} s; killed after logging epoch {at}: {until_kill:.1f} s")
    print(f"re-queued: {again:.1f} s, first epoch trained: {first}; {re.findall('train: resuming.*', log)}")
    print(f"time lost to the kill: {until_kill + again - whole:.1f} s; backups left: {left or 'none'}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
