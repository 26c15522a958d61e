"""Ctrl-C (SIGINT) and SIGTERM in the middle of a real `dvc repro`: the stage stops within seconds with one
line, `error: interrupted`, leaves no temporary or half-written output, and the next `dvc repro` ends with
the same bytes as a run that was never interrupted (training resumes from its backup)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from classifier.training.backup import DEFAULT_DIR

from conftest import CLASSES, PROJECT, add_bytes, default_signals, locked_outputs, make_project, sh, tool_env
from local_http import Handler, file_server

pytestmark = pytest.mark.e2e

ARCHIVE = "dataset.tar"
# More epochs than the tiny default, so that training is still running after its first backup.
PARAMS = {"train.epochs": 30, "train.batch_size": 64, "model.hidden_units": [32]}
# What each stage writes (DVC outputs), and which of them an interrupted run must not leave behind.
OUTPUTS = {
    "download": ["data/raw/dataset.archive"],
    "preprocess": [
        "data/prepared/train.npz",
        "data/prepared/validation.npz",
        "data/prepared/test.npz",
        "data/prepared/classes.json",
        "metrics/preprocess.json",
    ],
    # metrics/train is DVCLive's live log, written every epoch; the next run restores it from the backup.
    "train": ["models/model.keras"],
}
UPSTREAM = {  # what `dvc repro <stage>` runs
    "download": ["download"],
    "preprocess": ["download", "preprocess"],
    "train": ["download", "preprocess", "build_and_compile", "train"],
}
STOPPED_WITHIN = 15  # seconds from the signal to every process of the run having exited
# When each round of the preprocess tests sends its signal, in seconds after the decoder processes appeared:
# while the pool is still starting, then while chunks are decoded and their results sent back.
PREPROCESS_DELAYS = (0.0, 0.3, 1.0)


def image_folder_archive(
    path: Path, train: int = 300, test: int = 30, side: int = 768, variants: int = 6
) -> Path:
    """An uncompressed tar of train/<class>/*.png and test/<class>/*.png: 990 big, smooth PNGs (~17 MB)
    that take a few seconds to decode on 2 cores. Only `variants` images per class are encoded; their bytes
    repeat under other names."""
    y, x = np.mgrid[0:side, 0:side]
    with tarfile.open(path, "w") as archive:
        for label, name in enumerate(CLASSES):
            encoded = []
            for variant in range(variants):
                tint = np.array([60 + 70 * label, 40 + 20 * variant, 200 - 60 * label]) - 40
                pixels = np.stack([x * 80 // side, y * 80 // side, (x + y) * 40 // side], axis=-1) + tint
                buffer = io.BytesIO()
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
                encoded.append(buffer.getvalue())
            for split, count in (("train", train), ("test", test)):
                for i in range(count):
                    add_bytes(archive, f"photos/{split}/{name}/{i:04d}.png", encoded[i % variants])
    return path


class ThrottledHandler(Handler):
    """local_http's /ok/ server, sending 64 KB every 50 ms (~1.3 MB/s) while `server.slow` is set."""

    def do_GET(self) -> None:
        real = self.wfile

        class Throttled:
            def write(_, data: bytes) -> int:
                for start in range(0, len(data), 64 << 10):
                    if self.server.slow.is_set():
                        time.sleep(0.05)
                    real.write(data[start : start + (64 << 10)])
                return len(data)

            def flush(_) -> None:
                real.flush()

        self.wfile = Throttled()
        try:
            super().do_GET()
        finally:
            self.wfile = real


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder_archive(tmp_path_factory.mktemp("archive") / ARCHIVE)


@pytest.fixture(scope="module")
def server(archive: Path):
    with file_server() as server:
        server.RequestHandlerClass = ThrottledHandler
        server.handle_error = lambda request, address: None  # an interrupted client breaks the pipe: expected
        server.slow = threading.Event()
        server.files[ARCHIVE] = archive.read_bytes()
        yield server


def copy_project(source: Path, where: Path) -> Path:
    shutil.copytree(source, where, symlinks=True)
    return where


@pytest.fixture(scope="module")
def fresh(archive: Path, server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project, nothing run yet. Every project of this module is a copy of it: the code of all of them
    is the same, even while someone edits the working tree."""
    root = tmp_path_factory.mktemp("fresh") / "project"
    return make_project(root, archive, {"download.url": f"{server.url}/ok/{ARCHIVE}", **PARAMS})


@pytest.fixture(scope="module")
def built(fresh: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of `fresh` after an uninterrupted `dvc repro build_and_compile`: the reference for download
    and preprocess, and where the train tests start."""
    repo = copy_project(fresh, tmp_path_factory.mktemp("built") / "project")
    sh(repo, "dvc", "repro", "build_and_compile")
    return repo


@pytest.fixture(scope="module")
def trained(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of `built` after an uninterrupted `dvc repro train`: the reference for train."""
    repo = copy_project(built, tmp_path_factory.mktemp("trained") / "project")
    sh(repo, "dvc", "repro", "train")
    return repo


@contextlib.contextmanager
def busy_cores() -> Iterator[None]:
    """Every core kept busy by another process, as on a CI machine running other jobs. A stage then runs in
    slow motion, and a signal lands in windows that an idle machine crosses too fast to hit."""
    loops = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(min(4, len(os.sched_getaffinity(0))))
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def session_processes(session: int) -> list[psutil.Process]:
    """The live processes of a session (start_new_session=True gives each run its own), forked ones too,
    even those whose parent has ended."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


SHELLS = {"sh", "dash", "bash", "zsh", "fish"}


def stage_processes(dvc: subprocess.Popen, module: str) -> list[psutil.Process]:
    """The stage's Python processes (forked decoder workers included), never the shell DVC runs the command
    in: with SHELL unset, DVC uses /bin/sh, and dash forks the command instead of replacing itself with it."""
    try:
        found = psutil.Process(dvc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in found if _cmdline(p).count(f"stages.{module}") and p.name() not in SHELLS]


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def wait_for(condition: Callable[[], bool], dvc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not _holds(condition):
        assert dvc.poll() is None, f"dvc repro ended ({dvc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return condition()
    except (OSError, psutil.Error):  # a file or process that went away while we looked
        return False


def running(stage: str, repo: Path, dvc: subprocess.Popen) -> Callable[[], bool]:
    """True once the stage is well into its work."""
    if stage == "download":  # some of the archive is in the temporary file beside the output
        partial = (repo / "data/raw").glob
        return lambda: any(tmp.stat().st_size > 1 << 20 for tmp in partial(".dataset.archive.*.tmp"))
    if stage == "preprocess":  # the decoder processes have started
        return lambda: any(p.children() for p in stage_processes(dvc, "preprocess"))
    return lambda: bool(list((repo / DEFAULT_DIR).glob("*/epoch-*[0-9]")))  # train: an epoch is backed up


def interrupt(
    repo: Path, stage: str, signal_number: int, server, delay: float = 0.0
) -> tuple[int, float, str]:
    """Run `dvc repro <stage>`, send the signal to its process group `delay` seconds after the stage is well
    into its work, and return dvc's exit code, the seconds until every process of the run had ended, and
    everything printed."""
    log = repo.parent / "interrupted.log"
    server.slow.set() if stage == "download" else server.slow.clear()
    with open(log, "w") as out:
        dvc = subprocess.Popen(
            ["dvc", "repro", stage],
            cwd=repo,
            # DVC's shell where SHELL is unset, as on CI: dash runs the command as its child, so the signal
            # reaches a shell and a Python process, as it does for many users.
            env={**tool_env(), "SHELL": "/bin/sh"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_signals,  # noqa: PLW1509 (only sets two handlers)
        )
    processes: list[psutil.Process] = []  # the stage's (and a shell's): dvc itself is waited for by dvc.wait
    try:
        wait_for(running(stage, repo, dvc), dvc, f"{stage} running")
        time.sleep(delay)
        processes = psutil.Process(dvc.pid).children(recursive=True)
        signalled = time.monotonic()
        os.killpg(dvc.pid, signal_number)
        code = dvc.wait(timeout=STOPPED_WITHIN + 15)
        left = max(1.0, STOPPED_WITHIN + 15 - (time.monotonic() - signalled))
        alive = psutil.wait_procs(processes, timeout=left)[1]
        stopped = time.monotonic() - signalled
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"still running {stopped:.0f} s after the signal: {[_cmdline(p) for p in alive]}"
        return code, stopped, log.read_text()
    finally:
        server.slow.clear()
        for process in [psutil.Process(dvc.pid), *processes] if dvc.poll() is None else processes:
            with contextlib.suppress(psutil.Error):
                process.kill()
        dvc.wait()


def temporary_files(repo: Path) -> list[str]:
    """Anything an atomic write or save_model leaves beside the outputs when it does not finish."""
    found = []
    for folder in ("data", "models", "metrics"):
        for path in (repo / folder).rglob("*"):
            if path.name.endswith(".tmp") or path.name.startswith("tmp"):
                found.append(str(path.relative_to(repo)))
    return found


@pytest.mark.parametrize("stage", ["download", "preprocess", "train"])
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_stage_stops_cleanly_and_reruns_to_the_same_bytes(
    stage: str, signal_number: int, request: pytest.FixtureRequest, server, tmp_path: Path
) -> None:
    start, reference = ("built", "trained") if stage == "train" else ("fresh", "built")
    repo = copy_project(request.getfixturevalue(start), tmp_path / "project")
    reference = request.getfixturevalue(reference)
    # Preprocess is interrupted several times, at different moments, with the cores busy: the decoder
    # processes are forked, send results back and are stopped in windows a single moment rarely hits.
    delays = PREPROCESS_DELAYS if stage == "preprocess" else (0.0,)
    with busy_cores() if stage == "preprocess" else contextlib.nullcontext():
        interrupted = 0
        for delay in delays:
            code, stopped, output = interrupt(repo, stage, signal_number, server, delay)
            output = f"(signal {delay} s after the {stage} started)\n{output}"

            assert stopped < STOPPED_WITHIN, f"the run took {stopped:.1f} s to stop:\n{output}"
            lines = output.splitlines()
            assert "Traceback" not in output and temporary_files(repo) == [], output
            if stage == "preprocess" and any(line.startswith("preprocess: ") for line in lines):
                # The stage had printed its summary: its work was done and written before the signal came
                # (a loaded machine can stretch `delay` past it). Nothing was cut; the rerun below checks
                # the bytes. (dash, DVC's shell, then reports the signal as the command's exit.)
                continue
            interrupted += 1
            assert code != 0, output
            assert [line for line in lines if line.startswith("error:")] == ["error: interrupted"], output
            left = [path for path in OUTPUTS[stage] if (repo / path).exists()]
            assert left == [], f"the interrupted {stage} left {left}:\n{output}"
        assert interrupted, f"every signal came after the {stage} had finished"

    again = sh(repo, "dvc", "repro", stage)
    if stage == "train":
        assert "train: resuming after epoch" in again.stdout, again.stdout
    mine, uninterrupted = locked_outputs(repo), locked_outputs(reference)
    assert list(mine) == UPSTREAM[stage]
    assert mine == {name: uninterrupted[name] for name in mine}
    for path in OUTPUTS[stage]:
        assert (repo / path).read_bytes() == (reference / path).read_bytes(), path
    assert temporary_files(repo) == []
    assert not (repo / DEFAULT_DIR).exists() or not any((repo / DEFAULT_DIR).iterdir()), "backup left behind"


# The decoder of the preprocess stage on its own, under classifier.core.errors.run: its workers either wait for
# the next chunk (idle: the archive is read more slowly than they decode), are busy with a ~15 s chunk (busy),
# or decode small chunks as fast as they come and send each result back (stream: ~200 KB a chunk, more than
# a pipe holds; the pool is made after "decoding" is printed).
DECODER = """
import io, sys, time
import numpy as np
from PIL import Image
from classifier.core.errors import run
from classifier.data.decoder import ImageDecoder

def main():
    mode = sys.argv[1]
    side = 768 if mode == "busy" else 16
    y, x = np.mgrid[0:side, 0:side]
    buffer = io.BytesIO()
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)).save(buffer, "PNG")
    with ImageDecoder(32, workers=2) as decoder:
        decoder.CHUNK_FILES = {"busy": 2000, "idle": 4, "stream": 64}[mode]
        if mode == "stream":
            print("decoding", flush=True)
        for i in range(1_000_000):
            decoder.add(f"{i}.png", buffer.getvalue())
            if i == {"busy": 3999, "idle": 100}.get(mode):
                print("decoding", flush=True)
                if mode == "busy":
                    decoder.finish()
            if mode == "idle":
                time.sleep(0.001)

run(main)
"""
# When the stream test sends its signal, in seconds after "decoding": while the pool is made and its
# processes forked, then while chunks go to them and their results come back.
STREAM_DELAYS = (0.0, 0.01, 0.03, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 0.9)


def interrupt_decoder(mode: str, signal_number: int, delay: float) -> tuple[str, int, float, list[str]]:
    """Run DECODER, send the signal to its process group `delay` s after it printed "decoding", and return
    what it printed on stderr, its exit code, the seconds until it and its decoder processes had ended, and
    the processes still alive 5 s after it ended."""
    process = subprocess.Popen(
        [sys.executable, "-c", DECODER, mode],
        cwd=PROJECT,
        env={**tool_env(), "PYTHONPATH": str(PROJECT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_signals,  # noqa: PLW1509 (only sets two handlers)
    )
    try:
        assert process.stdout.readline() == "decoding\n", process.communicate()[1]
        time.sleep(delay)
        if mode != "stream":
            assert len(psutil.Process(process.pid).children()) == 2, "two decoder processes"
        signalled = time.monotonic()
        os.killpg(process.pid, signal_number)
        try:
            _, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 15 s after the signal, sent {delay} s after decoding started")
        deadline = time.monotonic() + 5
        while (alive := session_processes(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        stopped = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return stderr, process.returncode, stopped, [_cmdline(p)[:60] for p in alive]


@pytest.mark.parametrize("workers", ["idle", "busy"])
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_decoder_processes_stop_at_once_and_print_nothing(workers: str, signal_number: int) -> None:
    stderr, code, stopped, alive = interrupt_decoder(workers, signal_number, 0.5)
    assert stderr == "error: interrupted\n"
    assert code == 128 + signal_number
    assert alive == [], "a decoder process outlived it"
    assert stopped < 3, f"{stopped:.1f} s to stop: the decoder processes were waited for"


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_decoder_stops_at_any_moment_under_load(signal_number: int) -> None:
    """Signals at moments spread from the pool's start to the middle of a stream of results. A decoder process
    killed while it sent a result used to leave the pool waiting forever for the rest of it."""
    with busy_cores():
        for delay in STREAM_DELAYS:
            stderr, code, stopped, alive = interrupt_decoder("stream", signal_number, delay)
            moment = f"signal {delay} s after decoding started"
            assert stderr == "error: interrupted\n", f"{moment}:\n{stderr}"
            assert code == 128 + signal_number, moment
            assert alive == [], f"{moment}: {alive} outlived it"
            assert stopped < 3, f"{moment}: {stopped:.1f} s to stop"
