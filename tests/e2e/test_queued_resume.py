"""Sweeps that survive a kill: the train stage of a queued (`dvc exp run --queue` + `dvc queue start`) or
`--temp` experiment, killed with SIGKILL to its process group, resumes when the same experiment runs again
by any route, ends with the same bytes as an uninterrupted run and leaves no backup behind; with `-j 2`,
killing one experiment does not disturb the other; the cleanup command deletes orphaned backups."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from classifier.training.backup import DEFAULT_DIR

from conftest import locked_outputs, make_project, sh, tool_env

pytestmark = pytest.mark.e2e

EPOCHS = 20  # ~0.3 s each on tiny data: long enough to kill twice in the middle
WAIT = 300
CLEAN = ["python", "-m", "classifier.training.backup_clean"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, binary_archive: Path) -> Path:
    """The project with everything before train run and committed: each experiment only trains."""
    repo = make_project(tmp_path_factory.mktemp("queued") / "built", binary_archive, {"train.epochs": EPOCHS})
    sh(repo, "dvc", "repro", "build_and_compile")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "built")
    return repo


def copy_of(built: Path, where: Path) -> Path:
    return Path(shutil.copytree(built, where, symlinks=True))


def start_queue(repo: Path, jobs: int) -> None:
    """`dvc queue start`: its workers keep the stdout it was given, so sh() would wait for them to exit."""
    command = ["dvc", "queue", "start", "-j", str(jobs)]
    subprocess.run(
        command,
        cwd=repo,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=60,
    )


def train_process(repo: Path, experiment: str | None = None) -> psutil.Process | None:
    """The python process of a train stage running in `repo` or one of its temporary copies."""
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            command = process.cmdline()
            if "stages.train" not in command or not Path(process.cwd()).is_relative_to(repo):
                continue
            if experiment is None or process.environ().get("DVC_EXP_NAME") == experiment:
                return process
    return None


def logged_epochs(process: psutil.Process) -> int:
    tsv = Path(process.cwd()) / "metrics/train/plots/metrics/train/loss.tsv"
    return len(tsv.read_text().splitlines()) - 1 if tsv.exists() else 0


def kill_train(repo: Path, after: int, experiment: str | None = None) -> Path:
    """SIGKILL the train stage's process group once it has logged `after` epochs; return its workspace.
    (A queue worker's stages run in the worker's process group: the worker dies too, and `dvc queue
    status` keeps showing its experiment as Running.)"""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        process = train_process(repo, experiment)
        with contextlib.suppress(psutil.Error, OSError):
            if process is not None and logged_epochs(process) >= after:
                workspace = Path(process.cwd())
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
                psutil.wait_procs([process], timeout=30)
                return workspace
        time.sleep(0.02)
    raise AssertionError(f"no train stage in {repo} logged {after} epochs within {WAIT} s")


def queue_status(repo: Path) -> dict[str, str]:
    """{experiment name: Queued / Running / Success / Failed} from `dvc queue status`."""
    rows = [line.split() for line in sh(repo, "dvc", "queue", "status").stdout.splitlines()]
    return {row[1]: row[-1] for row in rows if len(row) >= 4 and row[0] != "Task"}


def wait_for(repo: Path, name: str, states: set[str]) -> str:
    deadline = time.monotonic() + WAIT
    while (state := queue_status(repo).get(name)) not in states:
        assert time.monotonic() < deadline, f"{name} is {state}, not {states}, after {WAIT} s"
        time.sleep(0.5)
    return state


def finished_log(repo: Path, name: str) -> str:
    """Wait for a queued experiment to end; its log, which must show it succeeded."""
    state = wait_for(repo, name, {"Success", "Failed"})
    log = sh(repo, "dvc", "queue", "logs", name).stdout
    assert state == "Success", log
    return log


def resumed_after(log: str) -> int:
    found = re.findall(r"^train: resuming after epoch (\d+) from (.*)$", log, re.MULTILINE)
    assert len(found) == 1, log
    epoch, where = found[0]
    assert ".dvc/tmp/exps" not in where, f"a backup in a temporary copy: {where}"
    assert f"\nEpoch {int(epoch) + 1}/{EPOCHS}\n" in log and f"\nEpoch 1/{EPOCHS}\n" not in log, log
    return int(epoch)


def experiment_outputs(repo: Path, name: str) -> list[dict]:
    """The train stage's outputs (path, md5, size) in an experiment's dvc.lock, timings left out."""
    refs = sh(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    [ref] = [ref for ref in refs if ref.endswith(f"/{name}")]
    lock = yaml.safe_load(sh(repo, "git", "show", f"{ref}:dvc.lock").stdout)
    return [out for out in lock["stages"]["train"]["outs"] if not out["path"].startswith("metrics/timing/")]


def backups(repo: Path) -> list[str]:
    """Every epoch backed up anywhere in the repository, temporary copies included."""
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("train-backup/*-worker-*/epoch-*"))


def test_killed_queued_and_temp_runs_resume_to_the_same_bytes(built: Path, tmp_path: Path) -> None:
    repo = copy_of(built, tmp_path / "repo")
    orphan = repo / DEFAULT_DIR / "0123456789abcdef-worker-0" / "epoch-0003"
    orphan.mkdir(parents=True)
    (orphan / "model.weights.h5").write_bytes(b"w" * 2_000_000)  # a run that will never come back

    # 1. Queued, killed: the backups are in the main repository, not in the run's temporary copy.
    sh(repo, "dvc", "exp", "run", "--queue", "-n", "q1", "train")
    start_queue(repo, 1)
    assert ".dvc/tmp/exps/" in str(kill_train(repo, after=6))
    assert queue_status(repo)["q1"] != "Success"
    left = backups(repo)
    assert left and all(path.startswith(f"{DEFAULT_DIR}/") for path in left), left
    q1_log = sh(repo, "dvc", "queue", "logs", "q1").stdout
    assert "train: 2 MB of backups from 1 other run in .dvc/tmp/train-backup (delete unused ones" in q1_log

    # 2. The same experiment with --temp resumes after the queued run's last epoch; killed again.
    with open(tmp_path / "temp.log", "w") as out:
        temp = subprocess.Popen(
            ["dvc", "exp", "run", "--temp", "-n", "t1", "train"],
            cwd=repo, env=tool_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        kill_train(repo, after=13)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(temp.pid, signal.SIGKILL)
        temp.wait()
    temp_log = (tmp_path / "temp.log").read_text()
    assert resumed_after(temp_log) >= 5, temp_log

    # 3. Queued again: resumes after the --temp run's last epoch and ends with the same bytes as a run
    # that was never killed (the workspace's, below); nothing of its key is left behind.
    sh(repo, "dvc", "exp", "run", "--queue", "-n", "q2", "train")
    start_queue(repo, 1)
    assert resumed_after(finished_log(repo, "q2")) >= 12
    assert backups(repo) == [str(orphan.relative_to(repo))], "only the orphan is left"
    uninterrupted = sh(repo, "dvc", "repro", "--force", "--single-item", "train").stdout
    assert f"\nEpoch 1/{EPOCHS}\n" in uninterrupted and "resuming" not in uninterrupted
    assert experiment_outputs(repo, "q2") == locked_outputs(repo)["train"]

    # The orphan: kept while recent, deleted when asked for everything no running stage holds.
    assert "kept 0123456789abcdef" in sh(repo, *CLEAN).stdout and orphan.exists()
    assert "deleted 0123456789abcdef: 2 MB" in sh(repo, *CLEAN, "--older-than", "0").stdout
    assert backups(repo) == []


def test_killing_one_of_two_parallel_experiments_leaves_the_other_alone(built: Path, tmp_path: Path) -> None:
    repo = copy_of(built, tmp_path / "repo")
    # Different params, so different run keys: each has its own backups and lock.
    sh(repo, "dvc", "exp", "run", "--queue", "-n", "killed", "train")
    sh(repo, "dvc", "exp", "run", "--queue", "-n", "other", "-S", f"train.epochs={EPOCHS + 1}", "train")
    start_queue(repo, 2)
    deadline = time.monotonic() + WAIT
    while train_process(repo, "other") is None:  # both run at once
        assert time.monotonic() < deadline, "the second experiment never started"
        time.sleep(0.05)
    kill_train(repo, after=5, experiment="killed")
    log = finished_log(repo, "other")
    assert f"Epoch {EPOCHS + 1}/{EPOCHS + 1}" in log and "resuming" not in log, log
    assert "warning" not in log and "another run" not in log, log
    assert queue_status(repo)["killed"] != "Success"
    left = {Path(path).parts[3] for path in backups(repo)}
    assert len(left) == 1, f"the killed experiment's backup, only: {left}"
    assert "deleted" in sh(repo, *CLEAN, "--older-than", "0").stdout
    assert backups(repo) == []
