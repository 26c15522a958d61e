"""Train the same model in one process and in N worker processes on this machine, and compare.

The workers find each other through TF_CONFIG on 127.0.0.1 ports, exactly as N machines would
(README, "Scaling out and resuming"). Run from the project root after `dvc repro build_and_compile`:

    python benchmarks/scale_out.py --workers 2 --epochs 5 [--no-xla]

Prints each run's wall time and final metrics, the largest difference between their trained weights,
and what the per-epoch resume backup of this model costs. Workers never use XLA (train.jit_compile),
so by default part of the difference is XLA's rounding; --no-xla leaves the data-parallel part alone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train(runs: list[Path], args: argparse.Namespace, distribution: str) -> float:
    """Run the train stage in every folder of `runs` at once (one per worker); return the wall time."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["train"].update(epochs=args.epochs, distribution=distribution)
    if args.no_xla:
        params["train"]["jit_compile"] = False
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(len(runs))]}
    processes = []
    start = time.perf_counter()
    for index, run in enumerate(runs):
        run.mkdir(parents=True)
        (run / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "PYTHONPATH": str(PROJECT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        if distribution == "multi_worker":
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        command = [
            sys.executable,
            "-m",
            "stages.train",
            str(args.compiled.resolve()),
            str(args.prepared.resolve()),
            "model.keras",
            "metrics",
            "--backup-dir",
            "backup",
        ]
        processes.append(
            subprocess.Popen(
                command, cwd=run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        for process in processes:
            _, errors = process.communicate(timeout=3600)
            if process.returncode:
                sys.exit(f"a {distribution} run failed:\n{errors}")
    finally:
        for process in processes:
            process.kill()
    return time.perf_counter() - start


def backup_seconds(compiled: Path, metrics: Path, scratch: Path) -> tuple[float, float]:
    """Median time of one per-epoch backup of this model (weights + optimizer state), and its size in MB."""
    from classifier.model.runtime import configure_tensorflow
    from classifier.model.saving import load_model
    from classifier.training.backup import Backup

    configure_tensorflow()
    model = load_model(compiled)
    backup = Backup(scratch / "backup", "benchmark")
    times = []
    for epoch in range(1, 12):
        start = time.perf_counter()
        backup.save(model, epoch, metrics)
        times.append(time.perf_counter() - start)
    size = sum(f.stat().st_size for f in (backup.dir / "epoch-0011").rglob("*") if f.is_file())
    backup.delete()
    return statistics.median(times), size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--compiled", type=Path, default=Path("models/compiled.keras"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--no-xla", action="store_true", help="train.jit_compile false for the single process too"
    )
    args = parser.parse_args()
    from classifier.model.saving import load_model

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        single = train([scratch / "single"], args, "single")
        workers = [scratch / f"worker{i}" for i in range(args.workers)]
        multi = train(workers, args, "multi_worker")
        for name, run, seconds in (
            ("1 process", scratch / "single", single),
            (f"{args.workers} workers", workers[0], multi),
        ):
            metrics = json.loads((run / "metrics" / "metrics.json").read_text())
            print(
                f"{name}: {seconds:.1f} s, final train loss {metrics['train']['loss']:.6f}, "
                f"validation loss {metrics['eval']['loss']:.6f}, validation accuracy {metrics['eval']['accuracy']:.4f}"
            )
        difference = max(
            float(np.abs(a - b).max())
            for a, b in zip(
                load_model(scratch / "single" / "model.keras").get_weights(),
                load_model(workers[0] / "model.keras").get_weights(),
            )
        )
        print(f"largest weight difference: {difference:.2e}")
        print(
            "outputs written by worker 1+:",
            sorted(p.name for w in workers[1:] for p in w.iterdir() if p.name != "params.yaml"),
        )
        seconds, megabytes = backup_seconds(args.compiled, scratch / "single" / "metrics", scratch)
        print(f"per-epoch backup: {seconds * 1000:.0f} ms (median of 11), {megabytes:.1f} MB")


if __name__ == "__main__":
    main()
