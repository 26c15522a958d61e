"""How long preprocess takes to read and decode the full CIFAR-10 archives on this machine.

usage: python benchmarks/decode.py [--jpg ../shared/data/cifar10-jpg.tar.gz] [--repeat 3]
                                   [--binary ARCHIVE | --no-binary]

Times read_dataset() (reading the archive and decoding every image; no output written) on the
60,000-image JPEG archive with each decoding strategy (worker processes, threads, serial) and a
plain single-threaded Pillow loop as the baseline. Runs are interleaved, so other work on the
machine hits every strategy alike; the median and the best run are reported. Then the same for the
CIFAR-10 binary layout: the JPEG archive re-encoded with ../shared/tools/jpg_to_cifar_binary.py into
a temporary folder (or --binary ARCHIVE). Results also go to benchmarks/results/decode.json (ignored
by git).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from classifier.core.params import load_params  # noqa: E402
from classifier.data.dataset import Options  # noqa: E402
from classifier.data.layouts import read_dataset  # noqa: E402


def options(decoding: str = "processes") -> Options:
    """The preprocess stage's options from params.yaml, decoding images the given way."""
    params = load_params(PROJECT / "params.yaml")
    return dataclasses.replace(Options.from_params(params.preprocess, params.seed), decoding=decoding)


SHARED = PROJECT.parent / "shared"


def pillow_loop(archive: Path) -> int:
    """The baseline: what everyone writes first."""
    count = 0
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                data = tar.extractfile(member).read()
                np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                count += 1
    return count


def timed(function, *args) -> float:
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # progress bars off the clock
        started = time.perf_counter()
        function(*args)
        return time.perf_counter() - started


def compare(strategies: dict, repeat: int) -> dict[str, dict]:
    times: dict[str, list[float]] = {name: [] for name in strategies}
    for run in range(repeat):
        for name, (function, *args) in strategies.items():
            load = os.getloadavg()[0]  # other work on the machine slows every strategy: say how much
            times[name].append(timed(function, *args))
            print(
                f"  run {run + 1}/{repeat} {name}: {times[name][-1]:.2f} s (load before: {load:.1f})",
                flush=True,
            )
    return {
        name: {
            "median_s": round(statistics.median(runs), 2),
            "best_s": round(min(runs), 2),  # the run least disturbed by other work on the machine
            "runs_s": [round(t, 2) for t in runs],
        }
        for name, runs in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpg", type=Path, default=SHARED / "data" / "cifar10-jpg.tar.gz")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--binary", type=Path, help="a CIFAR-10 binary archive (default: re-encode --jpg)")
    parser.add_argument("--no-binary", action="store_true", help="skip the binary-layout measurement")
    args = parser.parse_args()
    if not args.jpg.exists():
        sys.exit(f"error: {args.jpg}: not found (pass --jpg)")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    print(f"JPEG archive {args.jpg}:")
    results = {
        "cpus": os.cpu_count(),
        "jpeg": compare(
            {
                "processes (preprocess)": (read_dataset, args.jpg, options("processes")),
                "threads": (read_dataset, args.jpg, options("threads")),
                "serial": (read_dataset, args.jpg, options("serial")),
                "plain Pillow loop": (pillow_loop, args.jpg),
            },
            args.repeat,
        ),
    }
    if not args.no_binary:
        with tempfile.TemporaryDirectory() as scratch:
            binary = args.binary
            if binary is None:
                binary = Path(scratch) / "cifar-10-binary.tar.gz"
                print(
                    f"re-encoding {args.jpg.name} to the CIFAR-10 binary layout in {scratch} ...", flush=True
                )
                tool = SHARED / "tools" / "jpg_to_cifar_binary.py"
                subprocess.run([sys.executable, str(tool), str(args.jpg), str(binary)], check=True)
            print(f"binary archive {binary.name}:")
            results["binary"] = compare({"preprocess": (read_dataset, binary, options())}, args.repeat)

    print("\nmedian and best:")
    for layout in ("jpeg", "binary"):
        for name, result in results.get(layout, {}).items():
            print(f"  {layout:6} {name:24} {result['median_s']:6.2f} s {result['best_s']:6.2f} s")
    out = PROJECT / "benchmarks" / "results" / "decode.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(PROJECT)}")


if __name__ == "__main__":
    main()
