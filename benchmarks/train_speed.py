"""Train speed: the plain Keras recipe against the train stage's own fit path, on the same data.

    python benchmarks/train_speed.py               # real CIFAR-10 JPEGs from ../shared/data if present
    python benchmarks/train_speed.py --tiny        # a few seconds on generated data (CI); or BENCH_TINY=1
    python benchmarks/train_speed.py --recipe recipes/better-mlp.yaml   # a recipe's model: stage runs only

Each run trains in its own subprocess (so peak RSS is per process); plain and stage runs alternate, and
medians of the epochs after the first (which includes tracing and compilation) are compared. A third kind
of subprocess measures the GEMM ceiling: TensorFlow's matmul at the training shapes and a large numpy GEMM.
The plain recipe: float32 copies of the images scaled to [0, 1], one-hot labels, model.fit(batch_size=32).
With --recipe, the stage trains the recipe's model (its params merged into params.yaml, as recipes/run.py
does) and the plain runs are left out: the plain recipe is the classic model only.
Both use the same seed, thread count and op determinism (classifier.model.runtime.configure_tensorflow).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from classifier.core.errors import StageError  # noqa: E402
from classifier.core.files import write_json  # noqa: E402
from classifier.core.params import load_params, validate_params  # noqa: E402
from classifier.data.splits import load_split, save_split  # noqa: E402
from recipes.run import apply, read_recipe  # noqa: E402

REAL_ARCHIVE = PROJECT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CACHE = PROJECT / "benchmarks" / "results"
KINDS = ("plain", "stage")
LABELS = {"plain": "plain recipe", "stage": "train stage"}


# ---------------------------------------------------------------------------------------------
# Data: the real JPEGs decoded by the preprocess stage's own functions, or generated images.
# ---------------------------------------------------------------------------------------------


def prepare_real(archive: Path, seed: int) -> Path:
    """Decode the archive once (cached under benchmarks/results/) into train/validation .npz files."""
    from classifier.data.dataset import Options, split_validation
    from classifier.data.layouts import read_dataset

    folder = CACHE / f"data-{archive.name}-{archive.stat().st_size}"
    if not (folder / "validation.npz").exists():
        defaults = Options.from_params(load_params(PROJECT / "params.yaml").preprocess, seed)
        dataset = read_dataset(archive, dataclasses.replace(defaults, image_size=32))
        train, validation = split_validation(dataset.train_images, dataset.train_labels, 0.1, seed)
        save_split(folder / "train.npz", *train)
        save_split(folder / "validation.npz", *validation)
        write_json(folder / "classes.json", dataset.classes)
    return folder


def prepare_generated(folder: Path, count: int, seed: int) -> Path:
    """Images whose class shows in their mean colour (learnable), 90% train / 10% validation."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.int32)
    palette = rng.integers(30, 226, size=(10, 3)).astype(np.int16)
    images = np.empty((count, 32, 32, 3), dtype=np.uint8)
    for start in range(0, count, 4096):  # int16 noise in slices keeps this benchmark's own memory small
        part = slice(start, start + 4096)
        noise = rng.integers(-60, 61, size=images[part].shape, dtype=np.int16)
        images[part] = np.clip(palette[labels[part]][:, None, None, :] + noise, 0, 255)
    split = count * 9 // 10
    save_split(folder / "train.npz", images[:split], labels[:split])
    save_split(folder / "validation.npz", images[split:], labels[split:])
    write_json(folder / "classes.json", [f"class_{i}" for i in range(10)])
    return folder


# ---------------------------------------------------------------------------------------------
# Workers: each runs in its own process and prints one JSON line.
# ---------------------------------------------------------------------------------------------


def epoch_timer() -> Any:
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall and CPU seconds of every epoch (training plus validation), and the last logs."""

        def __init__(self) -> None:
            super().__init__()
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self.logs: dict[str, float] = {}

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.wall.append(time.perf_counter() - self.started[0])
            self.cpu.append(time.process_time() - self.started[1])
            self.logs = {k: float(v) for k, v in (logs or {}).items()}
            print(
                f"  {epoch + 1}: {self.wall[-1]:.2f} s ({self.cpu[-1]:.2f} CPU s), "
                f"loss {self.logs.get('loss', 0):.4f}",
                file=sys.stderr,
            )

    return EpochTimer()


def run_plain(data: Path, params: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The recipe as usually written: float32 arrays in [0, 1], one-hot labels, model.fit(batch_size=32)."""
    from classifier.model.runtime import configure_tensorflow

    configure_tensorflow(seed=params["seed"], threads=params["train"]["threads"])
    import keras

    images, labels = load_split(data / "train.npz")
    val_images, val_labels = load_split(data / "validation.npz")
    classes = len(json.loads((data / "classes.json").read_text()))
    x_train = images.reshape(len(images), -1).astype("float32") / 255
    x_val = val_images.reshape(len(val_images), -1).astype("float32") / 255
    y_train = keras.utils.to_categorical(labels, classes)
    y_val = keras.utils.to_categorical(val_labels, classes)

    model = keras.Sequential([keras.Input(shape=(x_train.shape[1],))])
    for units in params["model"]["hidden_units"]:
        model.add(keras.layers.Dense(units, activation=params["model"]["activation"]))
    model.add(keras.layers.Dense(classes, activation="softmax"))
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    timer = epoch_timer()
    model.fit(
        x_train,
        y_train,
        batch_size=params["train"]["batch_size"],
        epochs=epochs,
        validation_data=(x_val, y_val),
        callbacks=[timer],
        verbose=0,
    )
    return {
        "wall": timer.wall,
        "cpu": timer.cpu,
        "logs": timer.logs,
        "train": len(labels),
        "validation": len(val_labels),
    }


def run_stage(data: Path, params: dict[str, Any], epochs: int) -> dict[str, Any]:
    """What `python -m stages.build_and_compile` and `python -m stages.train` do: the same model from the
    params, data loading, fit path and DVCLive logging."""
    from classifier.model.build import compiled_model
    from classifier.model.runtime import configure_tensorflow
    from classifier.training.batches import load_images
    from classifier.training.fit import fit

    typed = validate_params(params)
    configure_tensorflow(seed=typed.seed, threads=typed.train.threads)
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    classes = len(json.loads((data / "classes.json").read_text()))
    train = load_images(data / "train.npz")
    validation = load_images(data / "validation.npz")
    model = compiled_model(typed, classes, train[0])
    timer = epoch_timer()
    with (
        tempfile.TemporaryDirectory() as metrics,
        Live(dir=metrics, dvcyaml=False, save_dvc_exp=False, report=None) as live,
    ):
        fit(
            model,
            train,
            validation,
            typed.train.model_copy(update={"epochs": epochs}),
            typed.seed,
            [timer, DVCLiveCallback(live=live)],
            verbose=0,
        )
    return {
        "wall": timer.wall,
        "cpu": timer.cpu,
        "logs": timer.logs,
        "train": len(train[1]),
        "validation": len(validation[1]),
    }


def matmul_shapes(
    params: dict[str, Any], classes: int
) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """Every matmul of one training step as (a shape, b shape, transpose_a): forward, weight gradient and
    (all trainable layers but the first) input gradient, as flops_per_sample counts them."""
    batch = params["train"]["batch_size"]
    sizes, frozen = layer_sizes(params, classes)
    shapes = []
    for number, (a, b) in enumerate(zip(sizes, sizes[1:])):
        shapes.append(((batch, a), (a, b), False))  # forward
        if number >= frozen:
            shapes.append(((batch, a), (batch, b), True))  # weight gradient
        if number > frozen:
            shapes.append(((batch, b), (b, a), False))  # input gradient (transposed weights: same work)
    return shapes


def run_gemm(params: dict[str, Any], tiny: bool) -> dict[str, float]:
    """GFLOP/s of TensorFlow's matmul at the training step's shapes, and of a large numpy (OpenBLAS) GEMM."""
    from classifier.model.runtime import configure_tensorflow

    configure_tensorflow(threads=params["train"]["threads"])
    import tensorflow as tf

    repeats = 5 if tiny else 200

    def tf_seconds(a_shape: tuple[int, int], b_shape: tuple[int, int], transpose_a: bool) -> float:
        rng = np.random.default_rng(0)
        a, b = (
            tf.constant(rng.random(a_shape, dtype=np.float32)),
            tf.constant(rng.random(b_shape, dtype=np.float32)),
        )
        # One matmul per call (a loop inside one graph could be merged into a single matmul by grappler).
        matmul = tf.function(lambda a, b: tf.matmul(a, b, transpose_a=transpose_a))
        matmul(a, b)  # trace and warm up
        return min(_seconds(lambda: [matmul(a, b) for _ in range(repeats)]) for _ in range(3)) / repeats

    # The step's matmuls, each timed alone: their FLOPs over their summed times (slow shapes weigh more).
    flops = seconds = 0.0
    for a_shape, b_shape, transpose_a in matmul_shapes(params, 10):
        m, k = (a_shape[1], a_shape[0]) if transpose_a else a_shape
        flops += 2 * m * k * b_shape[1]
        seconds += tf_seconds(a_shape, b_shape, transpose_a)
    size = 256 if tiny else 2048
    a, b = np.random.default_rng(0).random((2, size, size), dtype=np.float32)
    a @ b
    numpy_best = min(_seconds(lambda: a @ b) for _ in range(5))
    return {
        "tf_step_shapes": flops / seconds / 1e9,
        "numpy_large": 2 * size**3 / numpy_best / 1e9,
        "optimizer_update_ms": optimizer_update_ms(params, repeats),
    }


def optimizer_update_ms(params: dict[str, Any], repeats: int) -> float:
    """Milliseconds per update of all the model's weights by its own optimizer, `repeats` updates in one
    XLA loop.

    Adam(W) reads and writes every weight and both its moments at every step: memory traffic, not GEMM work.
    """
    import tensorflow as tf

    from classifier.model.build import compiled_model

    # Two blank images are enough to fit a whitening layer of the right shape: only its shape matters here.
    model = compiled_model(validate_params(params), 10, np.zeros((2, 32, 32, 3), np.uint8))
    weights, optimizer = model.trainable_variables, model.optimizer
    rng = np.random.default_rng(0)
    gradients = [tf.constant(rng.normal(0, 1e-3, w.shape).astype(np.float32)) for w in weights]

    @tf.function(jit_compile=True)
    def updates() -> Any:
        def one(step: Any) -> Any:
            optimizer.apply(gradients, weights)
            return step + 1

        return tf.while_loop(lambda step: step < repeats, one, [0])

    updates()  # trace and compile
    return min(_seconds(lambda: updates()[0].numpy()) for _ in range(3)) / repeats * 1e3


def _seconds(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Parent: alternate the workers, then compare medians.
# ---------------------------------------------------------------------------------------------


def spawn(
    worker: str, data: Path, epochs: int, tiny: bool, overrides: list[str], recipe: Path | None
) -> tuple[dict[str, Any], float]:
    """Run one worker process; return its JSON result and its peak RSS in MB (from wait4)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--worker", worker, "--data", str(data), "--epochs", str(epochs)]
        command += ["--output", out.name, *(["--tiny"] if tiny else []), *(f"--set={s}" for s in overrides)]
        command += ["--recipe", str(recipe)] if recipe else []
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        process = subprocess.Popen(command, cwd=PROJECT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"error: the {worker} worker failed (exit {os.waitstatus_to_exitcode(status)})")
        return json.loads(Path(out.name).read_text()), usage.ru_maxrss / 1024


def layer_sizes(params: dict[str, Any], classes: int) -> tuple[list[int], int]:
    """The widths of the MLP's matmuls, input first, and how many leading ones are fixed (the whitening)."""
    model = params["model"]
    inputs, whitening = params["preprocess"]["image_size"] ** 2 * 3, model["whitening"]
    sizes = [inputs, *([whitening] if whitening else []), *model["hidden_units"]]
    for _ in range(model["bottleneck_blocks"]):  # each block widens, then projects back
        sizes += [model["bottleneck_expansion"] * sizes[-1], sizes[-1]]
    return [*sizes, classes], 1 if whitening else 0


def flops_per_sample(params: dict[str, Any], classes: int) -> tuple[float, float]:
    """(training, inference) FLOPs per sample of the MLP: multiply-adds of every matmul count 2.

    Training = forward + weight gradients of the trainable layers + input gradients of every trainable
    layer but the first (the images, and a fixed whitening, need no gradient). Bias, normalisation,
    activation, loss and optimizer work are left out (they are not GEMMs).
    """
    sizes, frozen = layer_sizes(params, classes)
    layers = [2 * a * b for a, b in zip(sizes, sizes[1:])]
    forward = sum(layers)
    return forward + sum(layers[frozen:]) + sum(layers[frozen + 1 :]), forward


def summarize(
    results: dict[str, list[dict[str, Any]]],
    rss: dict[str, list[float]],
    gemm: list[dict[str, float]],
    params: dict[str, Any],
) -> dict[str, Any]:
    first = results["stage"][0]
    classes = 10
    train_flops, infer_flops = flops_per_sample(params, classes)
    epoch_flops = first["train"] * train_flops + first["validation"] * infer_flops
    tf_ceiling = statistics.median(g["tf_step_shapes"] for g in gemm)
    numpy_ceiling = statistics.median(g["numpy_large"] for g in gemm)
    summary: dict[str, Any] = {
        "train_samples": first["train"],
        "validation_samples": first["validation"],
        "training_mflop_per_sample": train_flops / 1e6,
        "gemm_gflops": {"tf_step_shapes": tf_ceiling, "numpy_large": numpy_ceiling},
    }
    for kind in results:
        # Epoch 1 includes tracing and (for XLA) compilation: medians are over the later epochs.
        steady = [t for r in results[kind] for t in (r["wall"][1:] or r["wall"])]
        cpu = [t for r in results[kind] for t in (r["cpu"][1:] or r["cpu"])]
        epoch = statistics.median(steady)
        gflops = epoch_flops / epoch / 1e9
        summary[kind] = {
            "epoch_seconds": epoch,
            "epoch_seconds_all": steady,
            "cpu_seconds_all": cpu,  # a slow epoch with the usual CPU time waited for a core
            "cpu_seconds_per_epoch": statistics.median(cpu),
            "first_epoch_seconds": statistics.median(r["wall"][0] for r in results[kind]),
            "samples_per_second": first["train"] / epoch,
            "gflops": gflops,
            "fraction_of_tf_gemm": gflops / tf_ceiling,
            "fraction_of_numpy_gemm": gflops / numpy_ceiling,
            "peak_rss_mb": max(rss[kind]),
            "final_val_accuracy": results[kind][-1]["logs"].get("val_accuracy"),
        }
    # What the same math costs at these kernels' own speed, nothing else counted: the floor of an epoch.
    batches = -(-first["train"] // params["train"]["batch_size"])
    summary["floor_seconds"] = {
        "matmuls": epoch_flops / tf_ceiling / 1e9,
        "optimizer": batches * statistics.median(g["optimizer_update_ms"] for g in gemm) / 1e3,
    }
    if "plain" in results:
        summary["speedup"] = summary["stage"]["samples_per_second"] / summary["plain"]["samples_per_second"]
        # CPU seconds do not count the time the process waits for a core (other jobs, a busy VM host).
        summary["cpu_speedup"] = (
            summary["plain"]["cpu_seconds_per_epoch"] / summary["stage"]["cpu_seconds_per_epoch"]
        )
        summary["three_x_epoch_seconds"] = summary["plain"]["epoch_seconds"] / 3
    return summary


def print_table(summary: dict[str, Any], kinds: tuple[str, ...]) -> None:
    rows = [
        ("epoch, median (s)", "epoch_seconds", "{:.2f}"),
        ("first epoch (s)", "first_epoch_seconds", "{:.2f}"),
        ("CPU s per epoch", "cpu_seconds_per_epoch", "{:.2f}"),
        ("samples/s", "samples_per_second", "{:.0f}"),
        ("GFLOP/s", "gflops", "{:.1f}"),
        ("of TF GEMM ceiling", "fraction_of_tf_gemm", "{:.0%}"),
        ("of numpy GEMM ceiling", "fraction_of_numpy_gemm", "{:.0%}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("val accuracy, last", "final_val_accuracy", "{:.4f}"),
    ]
    print(f"\n{'':24}" + "".join(f"{LABELS[kind]:>16}" for kind in kinds))
    for label, key, fmt in rows:
        cells = [fmt.format(summary[kind][key]) if summary[kind][key] is not None else "-" for kind in kinds]
        print(f"{label:24}" + "".join(f"{cell:>16}" for cell in cells))
    ceilings = summary["gemm_gflops"]
    print(
        f"\nGEMM ceilings: TensorFlow matmul at the training step's shapes "
        f"{ceilings['tf_step_shapes']:.1f} GFLOP/s, "
        f"numpy large GEMM {ceilings['numpy_large']:.1f} GFLOP/s "
        f"({summary['training_mflop_per_sample']:.2f} MFLOP per training sample)"
    )
    floor = summary["floor_seconds"]
    three_x = (
        f" (3x the plain recipe means {summary['three_x_epoch_seconds']:.2f} s per epoch)"
        if "plain" in kinds
        else ""
    )
    if "plain" in kinds:
        print(f"speed-up (samples/s, stage / plain): {summary['speedup']:.2f}x")
        print(f"CPU time per epoch, plain / stage: {summary['cpu_speedup']:.2f}x")
    print(
        f"floor of an epoch at these kernels' speed: matmuls {floor['matmuls']:.2f} s + optimizer updates "
        f"{floor['optimizer']:.2f} s = {floor['matmuls'] + floor['optimizer']:.2f} s{three_x}"
    )


def machine() -> str:
    import importlib.metadata as metadata

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("tensorflow-cpu", "keras", "numpy"))
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {versions}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny",
        action="store_true",
        default=os.environ.get("BENCH_TINY") == "1",
        help="generated data, 2 epochs, 1 round: checks that the benchmark runs (CI)",
    )
    parser.add_argument(
        "--archive", type=Path, default=REAL_ARCHIVE, help="CIFAR-10 JPEG archive (image folder)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 4; tiny: 2)")
    parser.add_argument("--rounds", type=int, default=None, help="plain/stage pairs, alternated (default 2)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a train: param, e.g. --set jit_compile=false (plain uses batch_size, threads)",
    )
    parser.add_argument(
        "--recipe",
        type=Path,
        default=None,
        help="train this recipe's model (stage runs only), e.g. recipes/better-mlp.yaml",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--worker", choices=[*KINDS, "gemm"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    params = load_params(PROJECT / "params.yaml").model_dump()  # as the file has them, edited by --set
    try:
        if args.recipe:
            params = apply(params, read_recipe(args.recipe))
    except StageError as error:
        sys.exit(f"error: {error}")
    kinds = ("stage",) if args.recipe else KINDS
    for override in args.set:
        key, _, value = override.partition("=")
        if key not in params["train"]:
            sys.exit(f"error: --set {override}: no such train param (have: {', '.join(params['train'])})")
        params["train"][key] = yaml.safe_load(value)
    try:
        validate_params(params)
    except StageError as error:
        sys.exit(f"error: {error}")

    if args.worker:
        if args.worker == "gemm":
            result = run_gemm(params, args.tiny)
        else:
            result = (run_plain if args.worker == "plain" else run_stage)(args.data, params, args.epochs)
        args.output.write_text(json.dumps(result))
        return

    epochs = args.epochs or (2 if args.tiny else 4)
    rounds = args.rounds or (1 if args.tiny else 2)
    print(f"machine: {machine()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    with tempfile.TemporaryDirectory() as scratch:
        if not args.tiny and args.archive.exists():
            data = prepare_real(args.archive, params["seed"])
            source = f"real CIFAR-10 JPEGs ({args.archive.name}, decoded by classifier.data.layouts)"
        else:
            data = prepare_generated(Path(scratch), 640 if args.tiny else 50_000, params["seed"])
            source = "generated images"
        print(
            f"data: {source}; {epochs} epochs x {rounds} rounds per recipe; "
            f"batch {params['train']['batch_size']}; "
            f"train params: {params['train']}"
            + (f"; model params: {params['model']}" if args.recipe else ""),
            flush=True,
        )

        results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        rss: dict[str, list[float]] = {kind: [] for kind in kinds}
        gemm = []
        for round_number in range(rounds):
            order = kinds if round_number % 2 == 0 else kinds[::-1]
            for kind in order:
                print(f"round {round_number + 1}/{rounds}: {LABELS[kind]}", flush=True)
                result, peak = spawn(kind, data, epochs, args.tiny, args.set, args.recipe)
                results[kind].append(result)
                rss[kind].append(peak)
            gemm.append(spawn("gemm", data, epochs, args.tiny, args.set, args.recipe)[0])

    summary = summarize(results, rss, gemm, params)
    summary.update(
        machine=machine(),
        data=source,
        epochs=epochs,
        rounds=rounds,
        load_average_end=os.getloadavg()[0],
        train_params=params["train"],
        model_params=params["model"],
        recipe=str(args.recipe) if args.recipe else None,
    )
    print_table(summary, kinds)
    print(f"load average at end: {summary['load_average_end']:.2f}")
    if args.json:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
