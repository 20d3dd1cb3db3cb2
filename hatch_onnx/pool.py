"""Worker processes that export many jobs each.

A worker (``python -m hatch_onnx.worker``) imports its framework once and runs job after job,
keeping the last model it loaded. The pool runs *batches*: the jobs of one checkpoint, which
go to one worker in a row so that features sharing a head class share one load. ``size``
threads each drive one worker at a time, so ``-j N`` runs N workers.

- A worker serves one framework in one interpreter (the frameworks' jobs may need different
  interpreters: TensorFlow needs transformers 4). A thread whose next batch is for the other
  framework stops its worker and starts the right one; batches are ordered by framework, so
  that happens once per thread.
- A job that kills its worker (a crash, the out-of-memory killer, the timeout) fails alone:
  the next job starts a new worker.
- Memory stays bounded: after the batch of a checkpoint larger than ``recycle_bytes`` the
  worker is stopped, and its successor starts empty.

Separate processes also let the build survive a crash and export with an interpreter that is
not its own (a Hatch build environment has no torch).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

from hatch_onnx.errors import WorkerDied
from hatch_onnx.frameworks.env import framework_env
from hatch_onnx.worker import PROTOCOL_MARK  # light: the worker imports its framework only when it runs

WORKER_MODULE = "hatch_onnx.worker"
DEFAULT_TIMEOUT = float(os.environ.get("HATCH_ONNX_WORKER_TIMEOUT", 3600))
# A worker that exported from a checkpoint this large is replaced before its next batch.
DEFAULT_RECYCLE_BYTES = int(float(os.environ.get("HATCH_ONNX_RECYCLE_MB", 1024)) * 2**20)
# What a failed job's reply carries of what its worker wrote to stderr meanwhile (the end of it).
STDERR_TAIL_LINES = 40
STDERR_TAIL_BYTES = 64 * 1024

Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True)
class Batch:
    """Jobs of one checkpoint, run in a row by one worker."""

    framework: str
    size_bytes: int
    items: tuple


def package_path() -> str:
    """A folder holding only this ``hatch_onnx`` (a symlink), for the worker's ``PYTHONPATH``.

    The worker may be another interpreter (the user's environment, with the frameworks) than the
    build's (an isolated build environment). Putting our parent folder on its path would also
    put every package beside ours first, compiled ones included, possibly for another Python.
    """
    import hashlib  # a name for a folder, not a content address: any stable hash does

    package = Path(__file__).resolve().parent
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    folder = Path(tempfile.gettempdir()) / f"hatch-onnx-path-{user}-{hashlib.sha1(str(package).encode()).hexdigest()[:16]}"
    link = folder / "hatch_onnx"
    if link.exists() and link.resolve() != package:  # not ours: never trust it
        return str(package.parent)
    if not link.exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(package, target_is_directory=True)
        except FileExistsError:  # another build made it first
            pass
        except OSError:  # no symlinks here: fall back to the parent folder
            return str(package.parent)
    return str(folder)


def worker_env(framework: str, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) for a worker: our package importable, only the job's framework visible."""
    env = framework_env(framework, base)
    env["PYTHONPATH"] = package_path() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HATCH_ONNX_PARENT_PID"] = str(os.getpid())  # a worker dies with its build (hatch_onnx.worker)
    return env


class Worker:
    """One worker process: :meth:`run` sends a request and waits for its answer.

    ``environ`` is the environment it starts from (default ``os.environ``): the Hatch hook names
    one without the build frontend's isolation rather than changing its own process's.
    """

    def __init__(self, python: str, framework: str, environ: Optional[Mapping[str, str]] = None) -> None:
        self.framework = framework
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self._process = subprocess.Popen(
            [python, "-m", WORKER_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, encoding="utf-8", env=worker_env(framework, environ), bufsize=1,
        )
        self._timed_out = False

    def run(self, request: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT) -> dict:
        """The worker's answer to ``request``; :class:`WorkerDied` if it ended without one.

        A failed job's answer also carries, as ``"stderr"``, the end of what the worker wrote to
        stderr while it ran (warnings, a library's own messages): on a Ray node, the only way
        they reach the build.
        """
        watchdog = threading.Timer(timeout, self._time_out)
        watchdog.start()
        mark = os.fstat(self._stderr.fileno()).st_size
        try:
            self._process.stdin.write(json.dumps(dict(request)) + "\n")
            self._process.stdin.flush()
            for line in self._process.stdout:
                if line.startswith(PROTOCOL_MARK):
                    reply = json.loads(line[len(PROTOCOL_MARK):])
                    if not reply.get("ok", True):
                        reply["stderr"] = self._stderr_since(mark)
                    return reply
        except (OSError, ValueError):  # a broken pipe: the worker is gone
            pass
        finally:
            watchdog.cancel()
        raise WorkerDied(self._death())

    def _stderr_since(self, mark: int) -> list[str]:
        """The last lines the worker wrote to stderr after ``mark``, read without moving the offset it writes at."""
        fd = self._stderr.fileno()
        size = os.fstat(fd).st_size
        start = max(mark, size - STDERR_TAIL_BYTES)
        text = os.pread(fd, size - start, start).decode("utf-8", "replace")
        return [line for line in text.splitlines() if line.strip()][-STDERR_TAIL_LINES:]

    def _time_out(self) -> None:
        self._timed_out = True
        self._process.kill()

    def _death(self) -> str:
        code = self._process.wait()
        if self._timed_out:
            return f"worker timed out after {DEFAULT_TIMEOUT:g} s"
        how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        self._stderr.seek(0)
        lines = self._stderr.read().strip().splitlines()
        tail = lines[-1][:200] if lines else ""
        return f"worker died ({how}) {tail}".strip()

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        if self.alive:
            try:
                self._process.stdin.close()  # end of requests: the worker returns
                self._process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._stderr.close()


class Slot:
    """One thread's worker: started on demand for a framework, replaced when it dies or must change.

    A Ray task (:mod:`hatch_onnx.ray_executor`) keeps one per Ray worker process, so the
    checkpoints one process exports in a row share a warm worker, as a pool thread's do.
    """

    def __init__(self, pythons: Mapping[str, str], environ: Optional[Mapping[str, str]]) -> None:
        self.pythons, self.environ = pythons, environ
        self.worker: Optional[Worker] = None

    def send(self, framework: str, request: Mapping[str, Any]) -> dict:
        """``request``'s answer from a worker of ``framework``; :class:`WorkerDied` (and no worker) if it died."""
        if self.worker is not None and (self.worker.framework != framework or not self.worker.alive):
            self.close()
        if self.worker is None:
            try:
                self.worker = Worker(self.pythons[framework], framework, self.environ)
            except OSError as exc:
                raise WorkerDied(f"cannot start a worker with {self.pythons[framework]}: {exc.strerror or exc}") from None
        try:
            return self.worker.run(request)
        except WorkerDied:
            self.close()
            raise

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def run_batches(
    batches: Sequence[Batch],
    pythons: Mapping[str, str],
    size: int,
    handle: Callable[[Any, Callable[[Mapping[str, Any]], dict]], Result],
    recycle_bytes: int = DEFAULT_RECYCLE_BYTES,
    environ: Optional[Mapping[str, str]] = None,
) -> Iterator[Result]:
    """Run every batch's items, yielding ``handle``'s results as they finish.

    ``handle(item, send)`` does one job; ``send(request)`` runs a request on the calling thread's
    worker (started on demand with ``pythons[framework]``, from ``environ``, default
    ``os.environ``) and returns its answer, or raises :class:`WorkerDied`, after which the next
    ``send`` starts a new worker.
    """
    pending: "queue.Queue[Batch]" = queue.Queue()
    for batch in sorted(batches, key=lambda b: (b.framework, -b.size_bytes)):
        pending.put(batch)
    results: "queue.Queue[tuple[bool, Any]]" = queue.Queue()

    def drive() -> None:
        slot = Slot(pythons, environ)
        try:
            while True:
                try:
                    batch = pending.get_nowait()
                except queue.Empty:
                    return
                for item in batch.items:
                    results.put((True, handle(item, functools.partial(slot.send, batch.framework))))
                if batch.size_bytes > recycle_bytes:
                    slot.close()
        except BaseException as exc:  # a bug in handle: surface it in the caller's thread
            results.put((False, exc))
        finally:
            slot.close()

    total = sum(len(batch.items) for batch in batches)
    threads = [threading.Thread(target=drive, daemon=True) for _ in range(max(1, min(size, len(batches))))]
    for thread in threads:
        thread.start()
    for _ in range(total):
        ok, value = results.get()
        if not ok:
            raise value
        yield value
    for thread in threads:
        thread.join()
