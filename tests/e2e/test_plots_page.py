"""End to end: `dvc repro` + `dvc exp run` on tiny data, then the metrics, the plots' data and PNGs, and
the offline plots page that plain `dvc plots show` / `dvc plots diff` write (.dvc/config's
plots.html_template: the template `make install` builds from plots_page/vendor/), drawn by headless
Chromium with no network."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from classifier.data.splits import load_split

from conftest import CLASSES, PROJECT, assert_png, copy_repo, run_folder, sh

pytestmark = pytest.mark.e2e
TIMEOUT = 900  # seconds a test may take: may build the shared pipeline

PNGS = {
    "metrics/plots/loss.png": (600, 400),
    "metrics/plots/accuracy.png": (600, 400),
    "metrics/plots/per_class_accuracy.png": (600, 400),
    "metrics/plots/confusion.png": (600, 600),
    "metrics/plots/misclassified.png": None,
}
VEGA_PLOTS = ["Loss_per_epoch", "Accuracy_per_epoch", "Confusion_matrix__test_"]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Injected first into a copy of the page: records script errors, then (2 s after load, in virtual time,
# so every vegaEmbed promise has settled) what each <div id> drew and how each <img> loaded.
PROBE = """
window.probeErrors = [];
addEventListener("error", (e) => probeErrors.push("error: " + e.message));
addEventListener("unhandledrejection", (e) => probeErrors.push("unhandled rejection: " + e.reason));
const consoleError = console.error;
console.error = (...args) => { probeErrors.push("console.error: " + args.join(" ")); consoleError(...args); };
addEventListener("load", () => setTimeout(() => {
  const plots = {};
  for (const div of document.querySelectorAll("div[id]")) {
    const drawn = div.querySelector("canvas, svg");
    const box = drawn ? drawn.getBoundingClientRect() : { width: 0, height: 0 };
    plots[div.id] = { element: drawn ? drawn.tagName : null, width: box.width, height: box.height };
  }
  const images = [...document.images].map((img) => ({
    src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
  }));
  const errorBox = document.getElementById("page-errors");
  const report = document.createElement("pre");
  report.id = "probe-report";
  const errorBoxShown = !errorBox.hidden;
  report.textContent = JSON.stringify({ errors: probeErrors, plots, images, errorBoxShown });
  document.body.append(report);
}, 2000));
"""


# ---------------------------------------------------------------------------------------------
# Fixtures: Chromium, and one pipeline run + one experiment shared by every test here
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Debian's chromium; installed with apt-get when missing and we are root (as in CI), by one test worker
    at a time (apt-get holds dpkg's lock)."""
    with FileLock(run_folder(tmp_path_factory) / "chromium.lock"):
        found = shutil.which("chromium")
        if found:
            return found
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip(
                "chromium is not installed and we cannot apt-get it (not root): apt-get install chromium"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
            if result.returncode != 0:
                pytest.skip(
                    f"could not install chromium ({' '.join(command)}): {result.stderr.strip()[-500:]}"
                )
        return shutil.which("chromium") or pytest.skip("apt-get installed chromium but it is not on PATH")


@pytest.fixture(scope="module")
def project(tmp_path_factory, pipeline) -> Path:
    """The pipeline run on tiny data (a copy of the shared run) and committed (make_project copies .dvc/config
    and builds the template)."""
    repo = copy_repo(pipeline, tmp_path_factory.mktemp("plots") / "repo")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "pipeline run")
    return repo


@pytest.fixture(scope="module")
def experiment(project) -> Path:
    """The project plus one experiment (1 epoch) named 'short', run up to the plot stage (the plots page
    never shows the export stage's outputs)."""
    sh(project, "dvc", "exp", "run", "-n", "short", "-S", "train.epochs=1", "plot")
    return project


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Metrics, plot data and PNGs from a real run
# ---------------------------------------------------------------------------------------------


def test_metrics_agree_with_the_confusion_rows(project):
    # per_class.json is out of the default metrics (dvc.yaml): asked for by name.
    targets = ["metrics/evaluate/metrics.json", "metrics/evaluate/per_class.json"]
    shown = json.loads(sh(project, "dvc", "metrics", "show", "--json", *targets).stdout)
    files = shown[""]["data"]  # "" is the workspace
    metrics = files["metrics/evaluate/metrics.json"]["data"]
    per_class = files["metrics/evaluate/per_class.json"]["data"]["per_class"]
    assert set(metrics) == {"loss", "accuracy", "top_3_accuracy"}
    rows = [
        line.split(",") for line in (project / "metrics/evaluate/confusion.csv").read_text().splitlines()[1:]
    ]
    actual, predicted = np.array(rows)[:, :2].T  # columns actual, predicted, confidence
    assert metrics["accuracy"] == pytest.approx(np.mean(actual == predicted))
    assert metrics["top_3_accuracy"] == 1.0  # three classes: the true one is always among the top 3
    assert 0 < metrics["loss"] < 20
    assert set(per_class) == set(CLASSES)
    for name, scores in per_class.items():
        assert scores["recall"] == pytest.approx(np.mean(predicted[actual == name] == name))
        assert scores["precision"] == pytest.approx(
            np.mean(actual[predicted == name] == name) if (predicted == name).any() else 0
        )


def test_confusion_plot_has_one_point_per_test_image(project):
    plots = json.loads(sh(project, "dvc", "plots", "show", "--json").stdout)["data"]
    [confusion] = plots["Confusion matrix (test)"]
    values = confusion["content"]["data"]["values"]
    _, labels = load_split(project / "data/prepared/test.npz")
    assert [v["actual"] for v in values] == [CLASSES[label] for label in labels]
    assert {v["predicted"] for v in values} <= set(CLASSES)
    assert {v["rev"] for v in values} == {"workspace"}


@pytest.mark.parametrize("path", PNGS)
def test_pngs_are_valid_images_of_sensible_size(project, path):
    assert_png(project / path, PNGS[path])


def test_evaluate_and_plot_outputs_are_byte_reproducible(project):
    outputs = [
        "metrics/evaluate/metrics.json",
        "metrics/evaluate/per_class.json",
        "metrics/evaluate/confusion.csv",
        *PNGS,
    ]
    before = {path: sha256(project / path) for path in outputs}
    sh(project, "dvc", "repro", "--force", "--single-item", "evaluate")
    sh(project, "dvc", "repro", "--force", "--single-item", "plot")
    assert {path: sha256(project / path) for path in outputs} == before


# ---------------------------------------------------------------------------------------------
# The offline plots page in headless Chromium
# ---------------------------------------------------------------------------------------------


def make_plots(repo: Path, *revisions: str) -> Path:
    """Plain `dvc plots show` (or `dvc plots diff REVISIONS`), as a user types it: no --html-template."""
    args = ["dvc", "plots", "diff", *revisions] if revisions else ["dvc", "plots", "show"]
    written = sh(repo, *args).stdout.strip()
    page = repo / "dvc_plots" / "index.html"
    assert written == page.as_uri()
    return page


def render(chromium: str, page: Path, profile: Path) -> dict:
    """Open a probed copy of the page (beside it, so relative image paths hold); return the probe's report."""
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("<head>", f"<head><script>{PROBE}</script>", 1))
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom"]
    result = subprocess.run([chromium, *flags, probed.as_uri()], capture_output=True, text=True, timeout=180)
    report = re.search(r'<pre id="probe-report">(.*?)</pre>', result.stdout, re.S)
    assert report, f"no probe report (exit {result.returncode}):\n{result.stderr[-2000:]}"
    return json.loads(html.unescape(report.group(1)))


def assert_page_drew_everything(page: Path, report: dict, images: int) -> None:
    assert report["errors"] == [] and not report["errorBoxShown"], report["errors"]
    drawn_ids = re.findall(r"vegaEmbed\('#([^']+)'", page.read_text())
    assert sorted(drawn_ids) == sorted(VEGA_PLOTS)
    for plot_id in drawn_ids:
        drawn = report["plots"][plot_id]
        assert drawn["element"] in ("CANVAS", "svg") and drawn["width"] > 100 and drawn["height"] > 100, (
            plot_id,
            drawn,
        )
    assert len(report["images"]) == images
    for image in report["images"]:
        assert image["complete"] and image["width"] >= 200 and image["height"] >= 200, image


def test_the_committed_config_names_the_committed_template():
    config = (PROJECT / ".dvc" / "config").read_text()
    # DVC resolves a relative plots.html_template against .dvc/ (dvc/commands/plots.py).
    assert re.search(r"^\[plots\]\n\s+html_template = \.\./plots_page/offline-template\.html$", config, re.M)
    assert "plots_page/offline-template.html" in (PROJECT / "Makefile").read_text()


def test_the_template_build_needs_no_npm_and_refuses_a_changed_script(tmp_path):
    folder = tmp_path / "plots_page"
    shutil.copytree(PROJECT / "plots_page", folder, ignore=shutil.ignore_patterns("build", "__pycache__"))
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}  # no npm, node or anything else to run
    build = [sys.executable, str(folder / "build_template.py"), str(tmp_path / "template.html")]
    subprocess.run(build, check=True, env=env, capture_output=True, timeout=60)
    built = (tmp_path / "template.html").read_text()
    inlined = re.findall(r"<!-- ([a-z-]+@[\d.]+) -->\n<script>", built)
    assert inlined == ["vega@5.33.1", "vega-lite@5.23.0", "vega-embed@6.29.0"]  # in loading order
    assert "{plot_divs}" in built and "{scripts}" not in built
    script = folder / "vendor" / "vega-embed-6.29.0.min.js"
    script.write_bytes(script.read_bytes().replace(b"vegaEmbed", b"vegaEmbet", 1))
    result = subprocess.run(build, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "vega-embed-6.29.0.min.js has sha256" in result.stderr, result.stderr


def test_plots_page_needs_no_network(project):
    page = make_plots(project).read_text()
    # Every script is inline: no <script src=...> at all, so nothing can come from a CDN.
    assert re.search(r"<script[^>]*\ssrc\s*=", page) is None
    assert "cdn.jsdelivr" not in page
    assert "vega@5.33.1" in page and "vega-lite@5.23.0" in page and "vega-embed@6.29.0" in page


def test_plots_page_draws_every_plot_in_chromium(project, chromium, tmp_path):
    page = make_plots(project)
    assert_page_drew_everything(page, render(chromium, page, tmp_path / "profile"), images=len(PNGS))


def test_plots_diff_page_draws_every_plot_in_chromium(experiment, chromium, tmp_path):
    page = make_plots(experiment, "main", "short")
    # main and short, side by side: each revision's five PNGs.
    assert_page_drew_everything(page, render(chromium, page, tmp_path / "profile"), images=2 * len(PNGS))
    assert '"rev": "short"' in page.read_text() and '"rev": "main"' in page.read_text()


def test_probe_sees_a_plot_that_fails_and_an_image_that_is_missing(project, chromium, tmp_path):
    page = make_plots(project)
    broken = page.with_name("broken.html")
    broken.write_text(
        page.read_text().replace(
            "vegaEmbed('#Loss_per_epoch', spec)", "vegaEmbed('#Loss_per_epoch', {mark: 42})"
        )
    )
    (page.parent / "static" / "workspace_metrics_plots_loss.png").unlink()
    report = render(chromium, broken, tmp_path / "profile")
    assert report["errors"] and report["errorBoxShown"]  # shown on the page for the user too
    assert report["plots"]["Loss_per_epoch"]["element"] is None
    assert report["plots"]["Accuracy_per_epoch"]["element"] == "CANVAS"
    assert [
        i["width"] for i in report["images"] if i["src"].endswith("workspace_metrics_plots_loss.png")
    ] == [0]
