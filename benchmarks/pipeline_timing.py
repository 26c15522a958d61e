"""Pipeline timing: every stage of `dvc repro` on the real JPEG archive, then the up-to-date no-op repro.

    python benchmarks/pipeline_timing.py                # the full default pipeline (params.yaml's epochs)
    python benchmarks/pipeline_timing.py --epochs 3     # a short run
    python benchmarks/pipeline_timing.py --archive my-images.tar.gz --epochs 1

Works in a throw-away git + DVC copy of the project (this checkout is not touched). Each stage runs as
`dvc repro --single-item <stage>` in pipeline order, so its time includes DVC's own work for it (hashing
the outputs); the peak RSS is the largest process of that run (dvc or the stage). Then `dvc repro` with
everything up to date runs a few times (target: <= 2 s).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parent.parent
REAL_ARCHIVE = PROJECT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "classifier", ".dvcignore"]
NOOP_RUNS = 3


def environment() -> dict[str, str]:
    """This interpreter's venv first on PATH (stages run as `python -m stages.X`), no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        DVC_NO_ANALYTICS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="b@example.com",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="b@example.com",
    )
    return env


def run(repo: Path, *command: str) -> tuple[float, float, str]:
    """Run a command in `repo`; return (seconds, peak RSS in MB of its largest process, output)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            command, cwd=repo, env=environment(), stdout=log, stderr=subprocess.STDOUT, text=True
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        log.seek(0)
        output = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {' '.join(command)} failed in {repo}:\n{output}")
    return seconds, usage.ru_maxrss / 1024, output


def make_copy(where: Path, archive: Path, epochs: int | None) -> list[str]:
    """A committed git + DVC repo with the pipeline reading `archive`; returns the stage names in order."""
    for name in PROJECT_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, where / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, where / name)
    params = yaml.safe_load((where / "params.yaml").read_text())
    params["download"]["url"] = str(archive.resolve())
    params["download"]["checksum"] = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    if epochs is not None:
        params["train"]["epochs"] = epochs
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "copy"],
    ):
        run(where, *command)
    return list(yaml.safe_load((where / "dvc.yaml").read_text())["stages"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=REAL_ARCHIVE, help="dataset archive for download.url")
    parser.add_argument(
        "--epochs", type=int, default=None, help="override train.epochs (default: params.yaml)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the timings here")
    args = parser.parse_args()
    if not args.archive.exists():
        sys.exit(f"error: {args.archive}: archive not found (pass --archive)")

    stages: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="pipeline-timing-") as scratch:
        repo = Path(scratch)
        names = make_copy(repo, args.archive, args.epochs)
        epochs = yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"]
        print(f"pipeline: {args.archive.name}, train.epochs = {epochs}, in {repo}")
        print(
            f"load average at start: {os.getloadavg()[0]:.2f} (other processes share these cores)", flush=True
        )
        for name in names:
            seconds, rss, _ = run(repo, "dvc", "repro", "--single-item", name)
            stages[name] = {"seconds": seconds, "peak_rss_mb": rss}
            print(f"  {name:20}{seconds:8.1f} s{rss:8.0f} MB", flush=True)
        results = json.loads((repo / "metrics/evaluate/metrics.json").read_text())
        model_hash = hashlib.sha256((repo / "models/model.keras").read_bytes()).hexdigest()
        noop = []
        for _ in range(NOOP_RUNS):
            seconds, _, output = run(repo, "dvc", "repro")
            if "Running stage" in output:
                sys.exit(f"error: the second `dvc repro` reran a stage:\n{output}")
            noop.append(seconds)

    total = sum(s["seconds"] for s in stages.values())
    print(f"  {'total':20}{total:8.1f} s  ({total / 60:.1f} min)")
    print(f"  {'no-op dvc repro':20}{statistics.median(noop):8.2f} s  (median of {NOOP_RUNS}: "
          f"{', '.join(f'{s:.2f}' for s in noop)})")  # fmt: skip
    print(f"  test accuracy {results['accuracy']:.4f}, test loss {results['loss']:.4f}; "
          f"models/model.keras sha256 {model_hash}")  # fmt: skip
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        result: dict[str, Any] = {"archive": str(args.archive), "epochs": epochs, "stages": stages,
                                  "total_seconds": total, "noop_seconds": noop, "test": results,
                                  "model_sha256": model_hash}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
