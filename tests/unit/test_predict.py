"""`python -m classifier.predict`: real images of any size and mode, through the real CLI, without DVC."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier import predict
from classifier.data.images import decode_image

from conftest import MINI_JPG, PROJECT, run_two_at_a_time, tool_env

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# sys.modules[name] = None makes `import name` fail: predict must work where DVC is not installed.
WITHOUT_DVC = (
    "import runpy, sys; sys.modules['dvc'] = sys.modules['dvclive'] = None; "
    "runpy.run_module('classifier.predict', run_name='__main__')"
)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Laid out like the project after `dvc repro`: models/model.keras, data/prepared/classes.json."""
    from classifier.model.build import build_model
    from classifier.model.runtime import configure_tensorflow
    from classifier.model.saving import save_model

    root = tmp_path_factory.mktemp("predict")
    configure_tensorflow(seed=0)
    save_model(build_model(32, len(CIFAR10), [16], "relu"), root / "models" / "model.keras")
    (root / "data" / "prepared").mkdir(parents=True)
    (root / "data" / "prepared" / "classes.json").write_text(json.dumps(CIFAR10))
    return root


@pytest.fixture(scope="module")
def model(project):
    from classifier.model.saving import load_model

    return load_model(project / "models" / "model.keras")


def predict_command(cwd: Path, *args: str) -> dict:
    """subprocess.run's arguments for `python -m classifier.predict ARGS` in `cwd`, without DVC."""
    env = {**tool_env(), "PYTHONPATH": str(PROJECT)}
    return {
        "args": [sys.executable, "-c", WITHOUT_DVC, *args],
        "cwd": cwd,
        "env": env,
        "capture_output": True,
        "text": True,
        "timeout": 300,
        "check": False,
    }


def expected_top(model, files: list[Path], k: int = 3) -> list[list[tuple[str, float]]]:
    """What predict must answer: the model on each file fitted by decode_image, as preprocess does."""
    images = np.stack([decode_image(f.read_bytes(), 32, str(f)) for f in files])
    return [predict.top_classes(p, CIFAR10, k) for p in np.asarray(model.predict_on_batch(images))]


def assert_same_top(got: list[dict], expected: list[tuple[str, float]]) -> None:
    assert [t["class"] for t in got] == [name for name, _ in expected]
    assert [t["probability"] for t in got] == pytest.approx([p for _, p in expected], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Generated photos of other sizes and modes, and files that are not images
# ---------------------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth colour gradient with a bright square: photo-like, and every size gives other pixels."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [255 * x / max(1, width - 1), 255 * y / max(1, height - 1), np.full_like(x, 40 * seed % 256)], axis=-1
    )
    rgb[height // 3 : height // 2, width // 3 : width // 2] = 250
    return Image.fromarray(rgb.astype(np.uint8))


def save_photos(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display, as phones save portrait photos
    photo(120, 90, 7).save(rotated, "JPEG", exif=exif)
    deep = Image.fromarray(np.asarray(photo(40, 40, 6).convert("L"), np.uint16) * 257)  # 16-bit grey
    saves = {
        "large.jpg": lambda p: photo(640, 480, 1).save(p, quality=90),
        "grey_wide.png": lambda p: photo(50, 20, 2).convert("L").save(p),
        "transparent.png": lambda p: photo(33, 77, 3).convert("RGBA").save(p),
        "palette.gif": lambda p: photo(100, 100, 4).convert("P").save(p),
        "cmyk.jpg": lambda p: photo(64, 48, 5).convert("CMYK").save(p),
        "deep_16bit.png": deep.save,
        "tiny.bmp": lambda p: photo(1, 1, 8).save(p),
        "nested/phone.jpg": lambda p: p.write_bytes(rotated.getvalue()),
    }  # fmt: skip
    for name, save in saves.items():
        (folder / name).parent.mkdir(exist_ok=True)
        save(folder / name)
    (folder / "README.md").write_text("not an image, and not named: skipped in a folder")
    (folder / ".thumbnails").mkdir()
    photo(32, 32, 9).save(folder / ".thumbnails" / "hidden.png")
    return sorted(folder / name for name in saves)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("photos")


@pytest.fixture(scope="module")
def good(photos) -> list[Path]:
    return save_photos(photos / "good")


@pytest.fixture(scope="module")
def bad(photos, good) -> list[Path]:
    folder = photos / "bad"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    (folder / "empty.png").write_bytes(b"")
    whole = (photos / "good" / "large.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # a download cut short
    return [folder / "notes.txt", folder / "empty.png", folder / "truncated.jpg", folder / "missing.jpg"]


EXPORTED = ["saved_model", "litert_float32", "litert_int8", "onnx"]


@pytest.fixture(scope="module")
def mini_jpegs(tmp_path_factory) -> Path | None:
    """A folder of the cat and ship test JPEGs of the mini set of real CIFAR-10 images (None without it)."""
    if not MINI_JPG.exists():
        return None
    folder = tmp_path_factory.mktemp("mini")
    with tarfile.open(MINI_JPG) as archive:
        members = [m for m in archive if m.isfile() and ("/test/cat/" in m.name or "/test/ship/" in m.name)]
        archive.extractall(folder, members=members, filter="data")
    return folder


@pytest.fixture(scope="module")
def cli_runs(
    project, photos, good, bad, exported, mini_jpegs, tmp_path_factory
) -> dict[str, subprocess.CompletedProcess]:
    """Every command line the tests below check, run up front two processes at a time (each launch costs
    seconds of TensorFlow): {name: finished process}."""
    (project / "three.json").write_text('["a", "b", "c"]')
    commands = {
        # Bad files between good ones: each must fail alone.
        "mixed": predict_command(
            project, *[str(p) for p in [good[0], *bad[:2], *good[1:], *bad[2:]]], "--json"
        ),
        "folder": predict_command(project, str(photos / "good")),
        "three classes": predict_command(project, str(good[0]), "--classes", "three.json"),
        "no model": predict_command(tmp_path_factory.mktemp("no_model"), str(good[0])),
        **{
            name: predict_command(project, *map(str, good[:4]), "--json", "--model", str(exported[name]))
            for name in EXPORTED
        },
    }
    if mini_jpegs is not None:
        commands["real jpegs"] = predict_command(project, str(mini_jpegs), "--json", "--top-k", "2")
    return dict(zip(commands, run_two_at_a_time(list(commands.values()))))


@pytest.fixture(scope="module")
def mixed_run(cli_runs) -> subprocess.CompletedProcess:
    return cli_runs["mixed"]


def test_every_size_and_mode_is_classified_as_preprocess_would(mixed_run, model, good):
    results = {item["path"]: item for item in json.loads(mixed_run.stdout)}
    for file, expected in zip(good, expected_top(model, good)):
        assert "error" not in results[str(file)], results[str(file)]
        assert_same_top(results[str(file)]["top"], expected)


def test_each_bad_file_gets_one_error_line_and_the_exit_code_says_so(mixed_run, bad):
    assert mixed_run.returncode == 1
    errors = mixed_run.stderr.strip().splitlines()[-len(bad) :]
    assert all(line.startswith("error: ") for line in errors), mixed_run.stderr
    for line, file in zip(errors, bad):
        assert line.startswith(f"error: {file}: "), line
    assert "cannot read" in errors[-1]  # missing.jpg
    assert {item["path"] for item in json.loads(mixed_run.stdout) if "error" in item} == {str(f) for f in bad}


def test_folder_gives_a_table_of_its_images_only(cli_runs, good, model):
    result = cli_runs["folder"]  # predict_command(project, str(photos / "good"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["image", "#1", "#2", "#3"]
    # Sorted paths; README.md and the hidden folder skipped.
    assert [line.split()[0] for line in lines[1:]] == [str(f) for f in good]
    for line, expected in zip(lines[1:], expected_top(model, good)):
        assert line.split()[1:] == [part for name, p in expected for part in (name, f"{p:.1%}")]


def test_classes_that_do_not_fit_the_model_are_a_one_line_error(cli_runs):
    result = cli_runs["three classes"]  # --classes three.json: ["a", "b", "c"]
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: three.json: 3 class names, but the model predicts 10 classes"
    )


def test_missing_model_is_a_one_line_error(cli_runs):
    result = cli_runs["no model"]  # in an empty folder
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: models/model.keras: model file not found"


# ---------------------------------------------------------------------------------------------
# Real CIFAR-10 JPEGs
# ---------------------------------------------------------------------------------------------


def test_real_jpegs_match_the_preprocessed_test_set(cli_runs, model, mini_jpegs):
    if mini_jpegs is None:
        pytest.skip(f"{MINI_JPG} not found")
    from classifier.core.params import load_params
    from classifier.data.dataset import Options
    from classifier.data.layouts import read_dataset

    files = sorted(mini_jpegs.rglob("*.jpg"))
    assert len(files) >= 20

    result = cli_runs["real jpegs"]  # predict_command(project, str(mini_jpegs), "--json", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert [a["path"] for a in answers] == [str(f) for f in files]

    # The same JPEGs as preprocess decodes them for the test split: predict must see identical pixels.
    defaults = load_params(PROJECT / "params.yaml")
    dataset = read_dataset(MINI_JPG, Options.from_params(defaults.preprocess, defaults.seed))
    in_order = np.concatenate(
        [dataset.test_images[dataset.test_labels == CIFAR10.index(c)] for c in ("cat", "ship")]
    )
    probabilities = np.asarray(model.predict_on_batch(in_order))
    for answer, p in zip(answers, probabilities):
        assert_same_top(answer["top"], predict.top_classes(p, CIFAR10, 2))


# ---------------------------------------------------------------------------------------------
# Pieces, in process
# ---------------------------------------------------------------------------------------------


def test_top_classes_most_probable_first_ties_in_class_order():
    assert predict.top_classes(np.array([0.1, 0.3, 0.3, 0.3]), ["a", "b", "c", "d"], 2) == [
        ("b", 0.3),
        ("c", 0.3),
    ]


def test_find_images_takes_named_files_as_given(tmp_path):
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    for name in ("dir/b.PNG", "dir/a.jpg", "dir/sub/c.webp", "dir/notes.txt", "odd.data"):
        (tmp_path / name).write_bytes(b"x")
    found = list(predict.find_images([tmp_path / "odd.data", tmp_path / "dir", tmp_path / "missing.jpg"]))
    names = ["odd.data", "dir/a.jpg", "dir/b.PNG", "dir/sub/c.webp", "missing.jpg"]
    assert found == [tmp_path / n for n in names]


def test_classify_keeps_file_order_across_chunks(model, good, bad, monkeypatch):
    monkeypatch.setattr(predict, "CHUNK", 3)  # 10 files: chunks of 3, 3, 3, 1
    files = [*good[:4], bad[0], *good[4:], bad[3]]
    results = list(predict.classify(model, files, CIFAR10, 3))
    assert [r.path for r in results] == [str(f) for f in files]
    assert [r.error is not None for r in results] == [f in bad for f in files]
    for result, expected in zip([r for r in results if not r.error], expected_top(model, good)):
        assert [name for name, _ in result.top] == [name for name, _ in expected]


@pytest.fixture(scope="module")
def exported(project) -> dict[str, Path]:
    """The project's model in every export format, as `dvc repro export` writes them."""
    from classifier.export.formats import export_all
    from classifier.model.saving import load_model

    model = load_model(project / "models" / "model.keras")
    calibration = np.random.default_rng(0).integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    return export_all(model, CIFAR10, calibration, project / "models" / "export")


@pytest.mark.parametrize("name", EXPORTED)
def test_predict_takes_every_exported_format(cli_runs, good, model, name):
    result = cli_runs[name]  # predict_command(project, good[:4], "--json", "--model", exported[name])
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert [a["path"] for a in answers] == [str(p) for p in good[:4]]
    for answer, expected in zip(answers, expected_top(model, good[:4])):
        if name == "litert_int8":  # probabilities in steps of 1/256: near-ties may swap places
            assert abs(answer["top"][0]["probability"] - expected[0][1]) < 0.05
        else:
            assert_same_top(answer["top"], expected)
