"""Run a plan: hits come from the cache, misses go to worker processes, then materialise.

Nothing here imports an ML framework: a build whose jobs all hit the cache reads params,
hashes checkpoints (through the stat cache), looks entries up and links files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Optional

from hatch_onnx.cache import CacheEntry, CacheStore, cache_key, resolve_cache_root
from hatch_onnx.errors import BuildError
from hatch_onnx.fingerprint import default_stat_cache, fingerprint
from hatch_onnx.package import materialize
from hatch_onnx.plan import Job, load_plan, toolchain_versions
from hatch_onnx.worker import PROTOCOL_MARK, worker_command, worker_env

WORKER_TIMEOUT = float(os.environ.get("HATCH_ONNX_WORKER_TIMEOUT", 3600))


@dataclasses.dataclass(frozen=True)
class JobResult:
    job: Job
    key: str
    status: str  # "hit", "exported" or "failed"
    seconds: float
    entry: Optional[CacheEntry] = None
    error: Optional[str] = None

    @functools.cached_property  # read once: the table, the manifest and the DVC figures all use it
    def report(self) -> Optional[dict]:
        """The export's validation report from its cache entry (``None`` for a failed job)."""
        if self.entry is None:
            return None
        return json.loads((self.entry.path / "report.json").read_text(encoding="utf-8"))

    @property
    def max_abs_diff(self) -> Optional[float]:
        if self.report is None:
            return None
        return max(o["max_abs_diff"] for o in self.report["validation"]["outputs"].values())


@dataclasses.dataclass(frozen=True)
class BuildResult:
    results: tuple[JobResult, ...]
    out: Optional[Path]

    @property
    def exported(self) -> int:
        return sum(r.status == "exported" for r in self.results)

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]


def _run_worker(job: Job, key: str, inputs: dict, store: CacheStore, python: str) -> JobResult:
    started = time.perf_counter()
    with store.lock(key):
        entry = store.lookup(key)  # another build may have exported it while we waited
        if entry is not None:
            return JobResult(job, key, "hit", time.perf_counter() - started, entry)
        with store.staging() as staging:
            request = {
                "model": str(job.checkpoint), "feature": job.feature, "framework": job.framework, "opset": job.opset,
                "atol": job.atol, "exporter": job.exporter, "allow_new_head": job.allow_new_head, "output": str(staging),
            }
            try:
                proc = subprocess.run(
                    worker_command(python), input=json.dumps(request), capture_output=True, text=True,
                    env=worker_env(job.framework), timeout=WORKER_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                return JobResult(job, key, "failed", time.perf_counter() - started, error=f"worker timed out after {WORKER_TIMEOUT:g} s")
            replies = [line[len(PROTOCOL_MARK):] for line in proc.stdout.splitlines() if line.startswith(PROTOCOL_MARK)]
            if not replies:
                how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
                tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
                return JobResult(job, key, "failed", time.perf_counter() - started, error=f"worker died ({how}) {tail}".strip())
            reply = json.loads(replies[-1])
            if not reply["ok"]:
                return JobResult(job, key, "failed", time.perf_counter() - started, error=reply["error"])
            entry = store.put(key, staging, inputs, reply["report"]["timings"])
    return JobResult(job, key, "exported", time.perf_counter() - started, entry)


class _Progress:
    """A live display on a terminal, one plain line per finished job otherwise."""

    def __init__(self, total: int, stream=None):
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr)
        self.total, self.done = total, 0
        self._live = None
        if self.console.is_terminal and total:
            from rich.progress import Progress

            self._live = Progress(console=self.console, transient=True)
            self._task = self._live.add_task("exporting", total=total)
            self._live.start()

    def finished(self, result: JobResult) -> None:
        self.done += 1
        if self._live is not None:
            self._live.update(self._task, advance=1, description=f"{result.job.label} {result.status}")
        else:
            detail = f": {result.error}" if result.error else ""
            self.console.print(f"[{self.done}/{self.total}] {result.job.label} {result.status} in {result.seconds:.1f} s{detail}", highlight=False, markup=False)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


def run_build(
    params_file: Path,
    only: Optional[Iterable[str]] = None,
    jobs: int = 1,
    out: Optional[Path] = None,
    python: Optional[str] = None,
    package_version: Optional[str] = None,
    progress_stream=None,
) -> BuildResult:
    """Plan, look up, export the misses (``jobs`` at a time), materialise into ``out``.

    Raises :class:`BuildError` after every job has finished if any failed; ``out`` is then left
    as it was.
    """
    params_file = Path(params_file).resolve()
    plan, configured_cache = load_plan(params_file, only)
    store = CacheStore(resolve_cache_root(configured_cache, params_file.parent))
    python = python or os.environ.get("HATCH_ONNX_PYTHON")
    versions = toolchain_versions(python)  # None: this interpreter's, read in-process
    python = python or sys.executable
    with default_stat_cache(store.root) as stats:
        prints = {checkpoint: fingerprint(checkpoint, stats) for checkpoint in sorted({job.checkpoint for job in plan})}

    results: dict[Job, JobResult] = {}
    misses: list[tuple[Job, str, dict]] = []
    for job in plan:
        inputs = job.key_inputs(prints[job.checkpoint], versions)
        key = cache_key(inputs)
        started = time.perf_counter()
        entry = store.lookup(key)
        if entry is not None:
            results[job] = JobResult(job, key, "hit", time.perf_counter() - started, entry)
        else:
            misses.append((job, key, inputs))

    if misses:
        progress = _Progress(len(misses), progress_stream)
        try:
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                futures = [pool.submit(_run_worker, job, key, inputs, store, python) for job, key, inputs in misses]
                for future in futures:
                    result = future.result()
                    results[result.job] = result
                    progress.finished(result)
        finally:
            progress.close()

    build = BuildResult(tuple(results[job] for job in plan), out)
    if build.failed:
        names = ", ".join(f"{r.job.label} ({r.error})" for r in build.failed)
        error = BuildError(f"{len(build.failed)} of {len(plan)} job(s) failed: {names}")
        error.result = build
        raise error
    if out is not None:
        materialize(Path(out), build.results, prints, versions, package_version)
    return build
