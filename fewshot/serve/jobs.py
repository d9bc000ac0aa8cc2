"""How the server shares one model and two cores between quick requests and heavy jobs.

Measured on a 2-core machine (``benchmarks/serve_soak.py`` and RESULTS): a one-image prediction takes twice as
long when any other model pass runs at the same time, whether in a thread of the server (the threads share the
cores) or in another process at the same priority; a process at the lowest priority (nice 19) leaves it at its
idle latency. Hence:

* :class:`ComputeLock`: one model pass at a time in the server process, and a waiting *interactive* pass
  (a prediction) goes before every waiting *background* pass (an estimate's split, an explained image, a chunk
  of new images to embed). Background work is cut into short passes, so a prediction waits at most one of them.
* :class:`JobSlots`: at most ``max_jobs`` heavy jobs (estimates, exports) at once; past that the request is
  answered 429 with ``Retry-After``.
* Exports (one long call that cannot be cut) run in a child process at nice 19 (:func:`run_export_process`,
  the ``python -m fewshot.serve.jobs JOB`` entry point), killed when the client goes away.
* :class:`Cancelled`: raised inside a background pass whose client disconnected (its ``cancel`` event set).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

from ..errors import FewshotError

NICE = 19  # the lowest CPU priority: an export in the background leaves predictions their idle latency


class Cancelled(Exception):
    """The client of a background job went away; the job stopped between two passes."""


class Busy(FewshotError):
    """Too many heavy jobs at once (HTTP 429); ``retry_after`` seconds is a fair guess of when to try again."""

    def __init__(self, message: str, retry_after: int = 10):
        super().__init__(message)
        self.retry_after = retry_after


class ComputeLock:
    """A lock whose interactive waiters go before its background ones (see the module docstring)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._busy = False
        self._interactive_waiting = 0

    @contextlib.contextmanager
    def interactive(self) -> Iterator[None]:
        with self._condition:
            self._interactive_waiting += 1
            try:
                self._condition.wait_for(lambda: not self._busy)
            finally:
                self._interactive_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def background(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """One background pass; raises :class:`Cancelled` (before the pass) once ``cancel`` is set."""
        with self._condition:
            while self._busy or self._interactive_waiting:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                self._condition.wait(timeout=0.2)
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._condition:
            self._busy = False
            self._condition.notify_all()


class JobSlots:
    """At most ``limit`` heavy jobs at once: :meth:`hold` raises :class:`Busy` when they are all taken."""

    def __init__(self, limit: int = 1):
        self.limit, self.running = int(limit), 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator[None]:
        with self._lock:
            if self.running >= self.limit:
                raise Busy(f"the server is busy with {self.running} heavy job{'s' if self.running > 1 else ''} "
                           f"(estimates, exports; --max-jobs {self.limit}): try the {what} again in a few seconds")
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1


M_ARENA_MAX = -8  # glibc mallopt parameter


def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_allocator_arenas(arenas: int = 2) -> None:
    """glibc gives every thread that allocates its own memory arena (up to 8 per core) and keeps what is freed
    in each: the server's request threads then hold gigabytes they no longer use (measured in the soak test).
    Two arenas bound that; ``FEWSHOT_MALLOC_ARENAS`` overrides the count (0: glibc's default); elsewhere than
    glibc this does nothing."""
    arenas = int(os.environ.get("FEWSHOT_MALLOC_ARENAS", arenas))
    libc = _libc()
    if arenas > 0 and libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_ARENA_MAX, arenas)


def release_memory() -> None:
    """Give freed memory back to the system after a heavy request (glibc's ``malloc_trim``; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def lower_priority() -> None:
    """In a child process before it runs anything: the lowest CPU priority (see the module docstring)."""
    os.nice(NICE)


def run_export_process(job_file: Path, cancel: threading.Event, timeout: float = 3600.0) -> None:
    """Run the export described by ``job_file`` (:func:`write_export_job`) in a child process at nice 19;
    kill it when ``cancel`` is set (raising :class:`Cancelled`); a failure raises its one-line message."""
    # -P (Python 3.11+) and the job's own folder as the working directory: ``python -m`` puts the working directory
    # first on the import path, and the server's may hold anything; stderr goes to a file, so a chatty child never
    # blocks on a full pipe nobody reads until it exits
    isolate = ["-P"] if sys.version_info >= (3, 11) else []
    command = [sys.executable, *isolate, "-m", "fewshot.serve.jobs", str(job_file.resolve())]
    errors = job_file.with_suffix(".stderr")
    with errors.open("wb") as sink:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink, cwd=job_file.parent,
                                 preexec_fn=lower_priority)
    started = time.monotonic()
    try:
        while child.poll() is None:
            if cancel.is_set() or time.monotonic() - started > timeout:
                raise Cancelled()
            time.sleep(0.1)
        if child.returncode != 0:
            lines = errors.read_bytes().decode("utf-8", "replace").strip().splitlines()
            message = lines[-1].removeprefix("error: ") if lines else f"exit status {child.returncode}"
            raise FewshotError(f"the export failed: {message}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        errors.unlink(missing_ok=True)


def write_export_job(job_file: Path, weights_file: Path, config: dict, normalization: list, fitted, names: list[str],
                     images: torch.Tensor, out: Path, format: str, threshold: dict | None = None) -> None:  # noqa: A002
    """Everything the child needs, in one file: the config, where the weights are, the fitted classifier's
    tensors (its unknown score's too), the class names, a few support images (the trace example and INT8
    calibration), the target, the unknown threshold's record."""
    torch.save({"config": config, "weights": str(weights_file), "normalization": normalization,
                "transform": fitted.transform, "head": fitted.head, "ways": fitted.ways,
                "temperature": fitted.temperature, "unknown_score": fitted.unknown_score, "unknown": fitted.unknown,
                "threshold": json.dumps(threshold), "names": names, "images": images, "out": str(out),
                "format": format}, job_file)


def export_job(job_file: str) -> None:
    """The child's side: rebuild the model from the job file and export it."""
    from ..model.checkpoint import rebuild_model
    from ..inference.export.formats import export_fitted
    from ..model.network import FittedClassifier
    from ..safe_io import safe_load

    job = safe_load(Path(job_file), "export job")
    weights = safe_load(Path(job["weights"]), "model weights")
    model, config = rebuild_model(job["config"], weights, job["normalization"], job["weights"])
    fitted = FittedClassifier(job["transform"], job["head"], job["ways"], job["temperature"],
                              unknown_score=job["unknown_score"], unknown=job["unknown"])
    export_fitted(model.eval(), fitted, job["images"], job["names"], config, Path(job["out"]), job["format"],
                  json.loads(job["threshold"]))


if __name__ == "__main__":  # python -m fewshot.serve.jobs JOB_FILE
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        export_job(sys.argv[1])
    except FewshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
