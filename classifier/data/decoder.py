"""Decoding many image files at once in worker processes, a chunk at a time, while the archive is still
being read; stopping the workers at once when the run is interrupted (one image: classifier/data/images.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Self

import numpy as np

from classifier.compat import close_result_pipe, pool_processes
from classifier.core.errors import (
    Interrupted,
    StageError,
    disk_full_message,
    interrupts_deferred,
    is_disk_full,
)
from classifier.core.files import DiskFull, free_bytes
from classifier.data.images import DEFAULT_MAX_PIXELS, BadImage, decode_image


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # Linux: the CPUs this process may run on
    except AttributeError:
        return os.cpu_count() or 1


SEMAPHORES = "/dev/shm"  # where Linux keeps the POSIX semaphores of multiprocessing's queues
WORKER_EXIT_SECONDS = 2  # a decoder process ends at once on SIGTERM; this is only for one that does not


def _worker_signals() -> None:
    """Ctrl-C and SIGTERM go to the whole process group, decoder processes too.

    A decoder process leaves Ctrl-C to the main process, which stops it (ImageDecoder.__exit__); else each
    worker would print a KeyboardInterrupt traceback of its own. SIGTERM just ends it (the SIGTERM handler
    forked from the main process would raise and print one too). Until this runs, both signals are held by
    the handler of interrupts_deferred (see _submit), and the main process ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _decode_chunk(
    files: list[tuple[str, bytes]], size: int, fit: str, max_pixels: int, skip_bad: bool
) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode a chunk; with skip_bad, return the indices and messages of bad files instead of raising."""
    images = np.zeros((len(files), size, size, 3), dtype=np.uint8)
    bad, messages = [], []
    for i, (name, data) in enumerate(files):
        try:
            images[i] = decode_image(data, size, name, fit, max_pixels)
        except BadImage as error:
            if not skip_bad:
                raise
            bad.append(i)
            messages.append(str(error))
    return images, bad, messages


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the decoder processes now, whatever they are doing, so that shutdown() does not wait for them.

    A process that dies while it sends its result (hundreds of KB through a 64 KB pipe: SIGTERM to the
    process group, or terminate() here) leaves half a message in the result pipe. The pool's manager thread
    then waits for the rest forever, and shutdown(wait=True) and the exit of the interpreter wait for that
    thread. Once every decoder process is gone, our own copy of the pipe's write end is the last one: closing
    it turns that wait into end-of-file, and the manager thread shuts the broken pool down.
    """
    processes = list(pool_processes(pool))
    for process in processes:
        process.terminate()  # SIGTERM: _worker_signals left it at the default, which ends the process
    for process in processes:
        process.join(WORKER_EXIT_SECONDS)
        if process.exitcode is None:
            process.kill()
            process.join()
    close_result_pipe(pool)


class ImageDecoder:
    """Decode a stream of (name, bytes) in worker processes, a chunk at a time.

    Files are added while the archive is still being read, so reading and decoding overlap and at
    most a few chunks of undecoded bytes are held in memory. Processes, not threads: a 32x32 JPEG
    decodes so fast that the GIL-bound Python around it dominates (see benchmarks/decode.py).
    """

    CHUNK_FILES = 256
    CHUNK_BYTES = 16 << 20

    def __init__(
        self,
        size: int,
        fit: str = "crop",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        skip_bad: bool = False,
        workers: int | None = None,
        parallel: str = "processes",
    ):
        self.options = (size, fit, max_pixels, skip_bad)
        self.workers = workers or min(8, _usable_cpus())
        self.parallel = parallel if self.workers > 1 else "serial"
        self.pool: Executor | None = None
        self.chunk: list[tuple[str, bytes]] = []
        self.chunk_bytes = 0
        self.pending: list[tuple[list[str], Future]] = []
        self.names: list[str] = []
        self.images: list[np.ndarray] = []
        self.skipped: list[str] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if self.pool is None:
            return
        # Held signals: a second Ctrl-C must not break a future's lock halfway through (see _collect).
        with interrupts_deferred():
            if exc_type is not None and isinstance(self.pool, ProcessPoolExecutor):
                # Interrupted, or a bad image: the chunks being decoded are not needed.
                _stop_workers(self.pool)
            self.pool.shutdown(wait=True, cancel_futures=True)

    def add(self, name: str, data: bytes) -> None:
        self.chunk.append((name, data))
        self.chunk_bytes += len(data)
        if len(self.chunk) >= self.CHUNK_FILES or self.chunk_bytes >= self.CHUNK_BYTES:
            self._submit()

    def finish(self) -> tuple[list[str], np.ndarray, list[str]]:
        """Return (names, images) in the order added, without skipped files, and the skip messages."""
        self._submit(last=True)
        while self.pending:
            self._collect()
        size = self.options[0]
        images = np.concatenate(self.images) if self.images else np.zeros((0, size, size, 3), np.uint8)
        return self.names, images, self.skipped

    def _submit(self, last: bool = False) -> None:
        if not self.chunk:
            return
        chunk, self.chunk, self.chunk_bytes = self.chunk, [], 0
        if self.parallel == "serial" or (last and self.pool is None):  # a few files: not worth a pool
            self._store([name for name, _ in chunk], _decode_chunk(chunk, *self.options))
            return
        while len(self.pending) >= 2 * self.workers:  # bounded memory: wait for the oldest chunk
            self._collect()
        # The first submit forks the workers. Interrupted in the middle of it, the pool could have a worker
        # it does not list in _processes yet (so __exit__ would not end it), or no manager thread.
        with interrupts_deferred():
            if self.pool is None:
                self.pool = self._new_pool()
            try:
                future = self.pool.submit(_decode_chunk, chunk, *self.options)
            except BrokenProcessPool:  # a process ended while decoding an earlier chunk: say why
                self._raise_if_terminated()
                while self.pending:
                    self._collect()
                raise StageError("a decoder process ended abruptly (out of memory?)") from None
        self.pending.append(([name for name, _ in chunk], future))

    def _new_pool(self) -> Executor:
        if self.parallel != "processes":
            return ThreadPoolExecutor(self.workers)
        try:
            return ProcessPoolExecutor(self.workers, initializer=_worker_signals)
        except OSError as error:  # its queues' semaphores are files in /dev/shm, a small tmpfs
            if not is_disk_full(error):
                raise
            raise DiskFull(disk_full_message(SEMAPHORES, None, free_bytes(SEMAPHORES))) from None

    def _collect(self) -> None:
        names, future = self.pending.pop(0)
        # Ctrl-C's and SIGTERM's handlers raise wherever Python is, also between the moment a future's
        # Condition lock is taken and the `with` that would release it: every call on a future locks it
        # (done(), result(), wait()). A lock broken there ("cannot release un-acquired lock") is a traceback;
        # a lock left taken hangs the pool's manager thread, and shutdown with it. So every call on the
        # future runs with the signals held, in 0.1 s slices: they raise between slices.
        while True:
            with interrupts_deferred():
                if wait([future], timeout=0.1).done:
                    error = future.exception()
                    result = None if error else future.result()
                    break
        if isinstance(error, BrokenProcessPool):
            self._raise_if_terminated()
            crashed = f"{names[0]} .. {names[-1]}: a decoder process crashed on one of these images"
            raise BadImage(crashed) from None
        if error is not None:
            raise error  # a bad image, as the decoder process raised it
        self._store(names, result)

    def _raise_if_terminated(self) -> None:
        """Decoder processes ended by SIGTERM, and only by it, mean that the process group got SIGTERM: the
        pool can notice that before this process has run its own handler."""
        ended = [process.exitcode for process in pool_processes(self.pool)]
        ended = [code for code in ended if code is not None]
        if ended and all(code == -signal.SIGTERM for code in ended):
            raise Interrupted(signal.SIGTERM)

    def _store(self, names: list[str], result: tuple[np.ndarray, list[int], list[str]]) -> None:
        images, bad, messages = result
        if bad:
            keep = np.setdiff1d(np.arange(len(names)), bad)
            names, images = [names[i] for i in keep], images[keep]
            self.skipped.extend(messages)
        self.names.extend(names)
        self.images.append(images)


def decode_images(
    files: Sequence[tuple[str, bytes]], size: int, fit: str = "crop", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode a list of (name, bytes) to one (N, size, size, 3) array; any bad file raises StageError."""
    with ImageDecoder(size, fit, max_pixels) as decoder:
        for name, data in files:
            decoder.add(name, data)
        return decoder.finish()[1]
