"""Shared test fixtures: small generated datasets and throw-away git + DVC copies of the project."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from filelock import FileLock
from PIL import Image

from classifier.core.dotted_keys import set_dotted

PROJECT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT.parent / "shared" / "data"
MINI_JPG = SHARED_DATA / "cifar10-jpg-mini.tar.gz"
FULL_JPG = SHARED_DATA / "cifar10-jpg.tar.gz"
CLASSES = ["airplane", "automobile", "bird"]
# What a copied project needs to run; data, models and metrics are made by the pipeline itself.
# plots_page/ (its committed offline template) and .dvc/config: plain `dvc plots show` writes the offline page.
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "classifier", ".dvcignore", "plots_page"]


# pyproject's `timeout` (300 s) is for unit and stage tests; an end-to-end test runs several stages, each
# starting TensorFlow, so it gets this many seconds before it fails, or its module's `TIMEOUT`.
E2E_TIMEOUT = 600


# The modules that take longest (`pytest --durations=0`, 2026-12-03), slowest first; the others follow in
# the order collected. `make test` hands modules to its workers in this order (--no-loadscope-reorder), so
# a long module never starts last and leaves one core idle while it ends. The first needs the shared
# pipeline: one worker builds it while the other starts the second. A stale list only costs time.
SLOWEST_FIRST = [
    "e2e/test_experiments.py", "e2e/test_interrupts.py", "e2e/test_queued_resume.py", "e2e/test_plots_page.py",
    "e2e/test_scale_and_resume.py", "e2e/test_benchmarks.py", "unit/test_fit_options.py",
    "e2e/test_reproducibility.py", "stages/test_train.py", "e2e/test_faults_training.py", "unit/test_recipes.py",
    "unit/test_predict.py", "e2e/test_full_disk.py", "stages/test_export.py", "e2e/test_pipeline.py",
    "stages/test_build_and_compile.py", "unit/test_fit.py", "unit/test_export_formats.py",
    "stages/test_bad_inputs.py",
]  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(getattr(item.module, "TIMEOUT", E2E_TIMEOUT)))
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    tests = Path(__file__).parent
    items.sort(key=lambda item: rank.get(item.path.relative_to(tests).as_posix(), len(rank)))


def learnable_images(labels: np.ndarray, side: int = 32, seed: int = 0) -> np.ndarray:
    """Images whose class shows in their mean colour, so a tiny MLP beats chance in 2 epochs."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, size=(labels.max() + 1, 3))
    noise = rng.integers(-30, 31, size=(len(labels), side, side, 3))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_tiny_splits(folder: Path, seed: int) -> Path:
    """90 training and 30 validation learnable images of 3 classes (batch 16 leaves a partial last batch)."""
    from classifier.data.splits import save_split

    labels = np.arange(120) % 3
    images = learnable_images(labels, seed=seed)
    save_split(folder / "train.npz", images[:90], labels[:90])
    save_split(folder / "validation.npz", images[90:], labels[90:])
    return folder


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 training images (batch 16 leaves a partial last batch) and 30 validation images, 3 classes."""
    from classifier.core.files import write_json

    folder = write_tiny_splits(tmp_path_factory.mktemp("prepared"), seed=1)
    write_json(folder / "classes.json", ["a", "b", "c"])
    return folder


def build_tiny_model(hidden_units: list[int], **options: Any) -> Any:
    """An MLP on 8 x 8 images of 3 classes, compiled with adam (seed TensorFlow first)."""
    from classifier.model.build import build_model, compile_model

    model = build_model(8, 3, hidden_units, "relu", **options)
    compile_model(model, "adam", 0.001, "categorical_crossentropy")
    return model


def cifar_binary_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Records of 1 label byte + R, G, B planes: the official CIFAR-10 binary layout."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    return np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1).tobytes()


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def make_cifar_binary_archive(
    path: Path, classes: list[str] = CLASSES, per_batch: int = 60, test: int = 60, seed: int = 0
) -> Path:
    """A .tar.gz in the official 'CIFAR-10 binary version' layout, with 5 small train batches."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as archive:
        add_bytes(archive, "cifar-10-batches-bin/batches.meta.txt", ("\n".join(classes) + "\n\n").encode())
        for name, count in [(f"data_batch_{i}.bin", per_batch) for i in range(1, 6)] + [
            ("test_batch.bin", test)
        ]:
            labels = rng.integers(0, len(classes), size=count)
            add_bytes(
                archive,
                f"cifar-10-batches-bin/{name}",
                cifar_binary_bytes(learnable_images(labels, seed=seed), labels),
            )
    return path


def make_image_folder(
    root: Path, classes: list[str] = CLASSES, train: int = 20, test: int = 6, ext: str = "png"
) -> Path:
    """root/{train,test}/<class>/<n>.<ext> with generated images."""
    for split, count in (("train", train), ("test", test)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(learnable_images(np.full(count, label), seed=label)):
                Image.fromarray(image).save(folder / f"{i:04d}.{ext}")
    return root


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def tar_of(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            add_bytes(archive, name, data)
    return path


def zip_of(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def folder_files(classes=CLASSES, train: int = 4, test: int = 2, root: str = "photos") -> dict[str, bytes]:
    """{member name: PNG bytes} of an image folder whose classes have distinct colours."""
    files = {}
    for label, cls in enumerate(classes):
        for split, count in (("train", train), ("test", test)):
            for i, image in enumerate(learnable_images(np.full(count, label), seed=label)):
                files[f"{root}/{split}/{cls}/{i}.png"] = encode(Image.fromarray(image), "PNG")
    return files


# Traps for model files that ask for code: each leaves MARKER behind if any of it runs.
MARKER = "code-ran.marker"
EVIL = f"""from pathlib import Path
Path({MARKER!r}).touch()

def payload(x):
    Path({MARKER!r}).touch()
    return x

class EvilLayer:
    pass
"""
# Runs when Keras rebuilds the model (it calls each layer on a symbolic input): proof that code ran.
RUNS_CODE = lambda x: (__import__("pathlib").Path("code-ran.marker").touch(), x)[1]  # noqa: E731


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of the whole test run, which pytest-xdist's workers share (each has its own
    popen-gwN inside it)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(folder)`'s result, built once for the whole run: under pytest-xdist the workers share it (the
    first one builds while the others wait on a file lock, then read). A build that failed halfway is
    started again from an empty folder."""
    root = run_folder(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            done.write_text(str(build(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def binary_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated CIFAR-10 binary archive: the same bytes for every worker (the shared pipeline's input)."""
    return built_once(
        tmp_path_factory,
        "archive",
        lambda folder: make_cifar_binary_archive(folder / "cifar-10-binary.tar.gz"),
    )


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compiled tiny model and train/validation splits, as build_and_compile and preprocess make them."""
    from classifier.data.splits import save_split
    from classifier.model.build import build_model, compile_model
    from classifier.model.runtime import configure_tensorflow
    from classifier.model.saving import save_model

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    for split, count in (("train", 256), ("validation", 64)):
        labels = rng.integers(0, 3, count)
        save_split(root / "data" / f"{split}.npz", learnable_images(labels), labels)
    configure_tensorflow(seed=42)
    model = build_model(32, 3, [32], "relu")
    compile_model(model, "adam", 0.001, "categorical_crossentropy")
    save_model(model, root / "compiled.keras")
    return root


# ---------------------------------------------------------------------------------------------
# Throw-away projects: a git + DVC repo holding a copy of the pipeline, params set for tiny data.
# ---------------------------------------------------------------------------------------------

TINY_PARAMS = {"train.epochs": 2, "train.batch_size": 16}


def tool_env() -> dict[str, str]:
    """The environment stages run in: this interpreter's venv first on PATH, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        DVC_NO_ANALYTICS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    return env


def default_signals() -> None:
    """For a test's child process: a background job of a shell script (CI's) starts with SIGINT ignored, and
    children inherit that; a Ctrl-C test needs the defaults back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def sh(repo: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command in `repo`; on failure the assertion shows its whole output."""
    result = subprocess.run(args, cwd=repo, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def run_two_at_a_time(commands: list[dict[str, Any]]) -> list[subprocess.CompletedProcess]:
    """subprocess.run(**kwargs) for each entry, two processes at once (the machine has 2 cores and each
    command mostly waits on one: importing TensorFlow); the results in the order of `commands`."""

    def run(kwargs: dict[str, Any]) -> subprocess.CompletedProcess:
        kwargs = dict(kwargs)
        return subprocess.run(check=kwargs.pop("check", False), **kwargs)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(run, commands))


def set_params(repo: Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys (e.g. 'train.epochs') in repo/params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        set_dotted(params, dotted, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(where: Path, archive: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A committed git + DVC repo with the pipeline, downloading `archive` with its real checksum."""
    where.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, where / name, ignore=shutil.ignore_patterns("__pycache__", "build"))
        elif source.exists():
            shutil.copy2(source, where / name)
    set_params(
        where,
        {
            "download.url": str(archive),
            "download.checksum": sha256(archive),
            **TINY_PARAMS,
            **(overrides or {}),
        },
    )
    sh(where, "git", "init", "-q", "-b", "main")
    sh(where, "dvc", "init", "-q")
    shutil.copy2(PROJECT / ".dvc" / "config", where / ".dvc" / "config")  # plots.html_template, as committed
    sh(where, "dvc", "config", "core.analytics", "false")
    sh(where, "git", "add", "-A")
    sh(where, "git", "commit", "-qm", "project")
    return where


def copy_repo(source: Path, where: Path) -> Path:
    """A copy of a repo, .git and .dvc/cache (run cache included) too: far cheaper than running its pipeline
    again, and the copy can be changed without touching the original."""
    shutil.copytree(source, where, symlinks=True)
    return where


# The shared project's params beyond TINY_PARAMS: int8 calibration on 64 images (the export stage's speed).
SHARED_PARAMS = {"export.calibration_images": 64}


@pytest.fixture(scope="session")
def fresh_project(tmp_path_factory: pytest.TempPathFactory, binary_archive: Path) -> Path:
    """The project on the generated archive, committed, nothing run yet. Shared by the whole session: never
    change it, take a copy_repo of it."""
    return built_once(
        tmp_path_factory,
        "fresh",
        lambda folder: make_project(folder / "project", binary_archive, SHARED_PARAMS),
    )


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory, fresh_project: Path) -> Path:
    """A copy of fresh_project after one `dvc repro` of every stage, export included (outputs and dvc.lock
    not committed): the one full pipeline many end-to-end tests read. Never change it: a test that does
    takes a copy_repo of it."""

    def run_every_stage(folder: Path) -> Path:
        repo = copy_repo(fresh_project, folder / "project")
        sh(repo, "dvc", "repro")
        return repo

    return built_once(tmp_path_factory, "pipeline", run_every_stage)


# ---------------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------------


TIMINGS = "metrics/timing/"  # the only outputs that differ between two runs of the same params


def lock_without_timings(repo: Path) -> dict[str, Any]:
    """dvc.lock, less the outputs under metrics/timing/ (how long the epochs and predictions took)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        stage["outs"] = [out for out in stage.get("outs", []) if not out["path"].startswith(TIMINGS)]
    return lock


def locked_outputs(repo: Path) -> dict[str, list]:
    """Each stage's outputs as dvc.lock records them (path, md5, size), timings left out: the bytes it ended with."""
    return {name: stage["outs"] for name, stage in lock_without_timings(repo)["stages"].items()}


def assert_png(path: Path, size: tuple[int, int] | None = None) -> Image.Image:
    """A whole, decodable PNG of a sensible size that is not a blank canvas."""
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()  # decodes every byte: a truncated file fails here
        width, height = image.size
        if size is not None:
            assert image.size == size, f"{path}: {image.size} != {size}"
        assert 200 <= width <= 4000 and 200 <= height <= 4000, f"{path}: {image.size}"
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 20, f"{path}: only {len(colours)} colours, looks blank"
        return image.copy()


def write_history(metrics_dir: Path, series: dict[str, dict[str, list[float]]]) -> Path:
    """DVCLive's layout: <dir>/plots/metrics/{train,eval}/<metric>.tsv with timestamp, step, value."""
    for folder, metrics in series.items():
        for metric, values in metrics.items():
            path = metrics_dir / "plots" / "metrics" / folder / f"{metric}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [f"{1700000000 + step}\t{step}\t{value}" for step, value in enumerate(values)]
            path.write_text("\n".join([f"timestamp\tstep\t{metric}", *rows]) + "\n")
    return metrics_dir
