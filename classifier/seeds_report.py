"""How much of a result is the seed? `python -m classifier.seeds_report [--json FILE] [--all-commits]`

Reads `dvc exp show --json` (runs it, or reads a saved copy given with --json) and groups the
experiments whose params differ only in `seed`. One Markdown table row per group: the params that tell
the groups apart (the keys that differ between them, shortened to their last part where that is unique),
the machine, how many seeds, the mean ± standard deviation (sample, n - 1) and the minimum of the test
accuracy (`metrics/evaluate/metrics.json` accuracy) and of the best epoch's validation accuracy
(`metrics/train/best.json` best.val_accuracy), the median number of epochs trained and the median
training time.

Results from different machines or software are never pooled: the train stage's
`metrics/train/environment.json` (CPU, instruction sets, TensorFlow/Keras/NumPy versions, threads, ...)
and the hashes of the code the stages ran (the `.py` deps) are part of a group's key. Experiments that
are queued, running or failed, or lack one of those metrics, are listed as skipped, never pooled; so is
a second run of a seed already in its group.

Training time is `seconds` in `metrics/timing/train.json`: the train stage's seconds over all epochs,
counted across a resume (runs made before the train stage wrote it read n/a).

Only experiments count, not the workspace or the baseline commits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier.core.dotted_keys import flatten
from classifier.training.timing import describe

TEST = ("metrics/evaluate/metrics.json", ("accuracy",))
BEST = ("metrics/train/best.json", ("best", "val_accuracy"))
STEPS = ("metrics/train/metrics.json", ("step",))
ENVIRONMENT = "metrics/train/environment.json"
TIME = ("metrics/timing/train.json", ("seconds",))
MACHINE = (
    "cpu",
    "cpu_family_model",
    "widest_vectors",
)  # the machine column; other differing fields get their own


@dataclass
class Run:
    name: str
    rev: str
    seed: int
    params: dict[str, Any]  # flattened, without seed
    environment: dict[str, Any]
    code: str  # the hashes of the .py deps, joined
    test: float
    best: float
    epochs: int
    seconds: float | None


@dataclass
class Group:
    params: dict[str, Any]
    environment: dict[str, Any]
    code: str
    runs: list[Run] = field(default_factory=list)


def metric(data: dict[str, Any], where: tuple[str, tuple[str, ...]]) -> Any:
    """The value at `where` (file, key path) in an experiment's metrics; None if absent."""
    path, keys = where
    value = data.get("metrics", {}).get(path, {}).get("data")
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def why_skipped(
    state: Any, rev: dict[str, Any], params: Any, values: list[Any], environment: Any
) -> str | None:
    if state in ("queued", "running", "failed") or rev.get("error"):
        return state if state in ("queued", "running") else "failed"
    missing = [w[0] for w, v in zip((TEST, BEST, STEPS), values) if v is None] + (
        [] if params else ["params.yaml"]
    )
    if missing:
        return "no " + ", ".join(missing)
    return None if environment else f"no {ENVIRONMENT}: its machine is unknown"


def read_runs(show: list[dict[str, Any]]) -> tuple[list[Run], list[tuple[str, str, str]]]:
    """The experiments with every metric the report needs, and (name, rev, why) for the others."""
    runs, skipped = [], []
    for experiment in (e for commit in show for e in commit.get("experiments") or [] if e.get("revs")):
        rev = experiment["revs"][0]  # the newest
        name, data = experiment.get("name") or rev["rev"][:7], rev.get("data") or {}
        params = data.get("params", {}).get("params.yaml", {}).get("data")
        environment = metric(data, (ENVIRONMENT, ("environment",)))
        values = [metric(data, where) for where in (TEST, BEST, STEPS)]
        why = why_skipped((experiment.get("executor") or {}).get("state"), rev, params, values, environment)
        if why:
            skipped.append((name, rev["rev"], why))
            continue
        flat = {key: value for key, value in flatten(params).items() if key != "seed"}
        deps = data.get("deps") or {}
        code = " ".join(f"{p}:{d.get('hash')}" for p, d in sorted(deps.items()) if p.endswith(".py"))
        test, best, steps = values
        seconds = metric(data, TIME)
        runs.append(Run(name, rev["rev"], params.get("seed"), flat, environment, code, float(test), float(best),
                        int(steps) + 1, None if seconds is None else float(seconds)))  # fmt: skip
    return runs, skipped


def key_of(run: Run) -> str:
    return json.dumps([run.params, run.environment, run.code], sort_keys=True)


def group_runs(runs: list[Run], skipped: list[tuple[str, str, str]]) -> list[Group]:
    """Runs grouped by everything but the seed; a seed seen twice in a group is counted once."""
    groups: dict[str, Group] = {}
    for run in runs:
        group = groups.setdefault(key_of(run), Group(run.params, run.environment, run.code))
        twin = next((other for other in group.runs if other.seed == run.seed), None)
        if twin:
            skipped.append((run.name, run.rev, f"seed {run.seed} again, as in {twin.name}: counted once"))
        else:
            group.runs.append(run)
    return sorted(groups.values(), key=lambda g: -statistics.mean(r.test for r in g.runs))


def differing(dicts: list[dict[str, Any]]) -> list[str]:
    """The keys whose values are not the same in every dict, in first-seen order."""
    keys = list(dict.fromkeys(key for d in dicts for key in d))
    return [k for k in keys if len({json.dumps(d.get(k, "(none)"), sort_keys=True) for d in dicts}) > 1]


def short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key as its shortest unique tail: train.augment.flip -> flip."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            if sum(other.endswith(f".{tail}") or other == tail for other in keys) == 1:
                break
        names[key] = tail
    return names


def machine(environment: dict[str, Any]) -> str:
    return " ".join(str(environment.get(k, "?")) for k in MACHINE)


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def duration(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    text = describe(statistics.median(known))
    return text if len(known) == len(values) else f"{text} ({len(known)} of {len(values)})"


def cell(value: Any) -> str:
    return (json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)).replace(
        "|", "\\|"
    )


def report(groups: list[Group], skipped: list[tuple[str, str, str]]) -> str:
    """The Markdown table, then what was skipped and why."""
    params = differing([g.params for g in groups])
    software = [k for k in differing([g.environment for g in groups]) if k not in MACHINE]
    names = short_names(params)
    code = len({g.code for g in groups}) > 1
    header = [*(names[k] for k in params), "machine", *software, *(["code"] if code else []), "seeds",
              "test accuracy", "min", "best val accuracy", "min", "epochs", "train time"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for g in groups:
        seeds = sorted(r.seed for r in g.runs)
        row = [*(cell(g.params.get(k, "(none)")) for k in params), machine(g.environment),
               *(cell(g.environment.get(k)) for k in software), *([hashlib.sha256(g.code.encode()).hexdigest()[:7]] if code else []),
               f"{len(seeds)} ({', '.join(map(str, seeds))})",
               spread([r.test for r in g.runs]), f"{min(r.test for r in g.runs):.4f}",
               spread([r.best for r in g.runs]), f"{min(r.best for r in g.runs):.4f}",
               f"{statistics.median(r.epochs for r in g.runs):g}", duration([r.seconds for r in g.runs])]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    if not groups:
        lines = ["No experiment with metrics to report."]
    if len({json.dumps(g.params, sort_keys=True) for g in groups}) < len(groups):
        lines += ["", "Rows with the same params ran on other machines, software or code: never pooled."]
    if any(r.seconds is None for g in groups for r in g.runs):
        lines += ["", f"train time: n/a for runs without {TIME[0]} (made before the train stage wrote it)."]
    if skipped:
        lines += [
            "",
            "Skipped (not pooled):",
            *(f"- `{name}` ({rev[:7]}): {why}" for name, rev, why in skipped),
        ]
    return "\n".join(lines) + "\n"


def exp_show(all_commits: bool) -> list[dict[str, Any]]:
    command = ["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed: {' '.join(result.stderr.split())}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="a saved `dvc exp show --json`; default: run it here")
    parser.add_argument("--all-commits", action="store_true", help="dvc exp show --all-commits")
    args = parser.parse_args(argv)
    show = json.loads(args.json.read_text()) if args.json else exp_show(args.all_commits)
    runs, skipped = read_runs(show)
    sys.stdout.write(report(group_runs(runs, skipped), skipped))


if __name__ == "__main__":
    main()
