"""Run a plan: look every job up in the cache, export the misses in worker processes, materialise.

The one pipeline behind the three front doors: ``hatch-onnx build`` (and the DVC stages that
call it) and the Hatch hook all call :func:`run_build`. Nothing here imports an ML framework:
a build whose jobs all hit reads params (through the plan memo), hashes checkpoints (through
the stat cache), looks entries up and links files.

Interpreters: PyTorch jobs run in ``python`` (``--python``, ``$HATCH_ONNX_PYTHON``, else this
interpreter), TensorFlow jobs in ``python_tf`` (``--python-tf``, ``$HATCH_ONNX_PYTHON_TF``, else
the PyTorch one), which must have transformers 4 and TensorFlow: transformers 5 dropped TF.
Each job's key holds the versions of the interpreter that runs it.

Executors: the misses run in this machine's worker pool (:mod:`hatch_onnx.pool`, ``local``, the
default) or as Ray tasks on a cluster (:mod:`hatch_onnx.ray_executor`, ``ray``), one task per
checkpoint running the same :func:`export_task`; entries come back through the remote tier.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

from hatch_onnx.cache import CacheEntry, CacheStore, cache_key
from hatch_onnx.errors import BadInputError, BuildError, FrameworkError, NotCachedError, WorkerDied
from hatch_onnx.fingerprint import default_stat_cache, fingerprint
from hatch_onnx.layouts import as_layouts
from hatch_onnx.params import REMOTE_ENV, read_params
from hatch_onnx.plan import Job, resolve_plan
from hatch_onnx.toolchain import PYTHON_ENV, PYTHON_TF_ENV, Versions, interpreter_versions, runs_tensorflow

@dataclasses.dataclass(frozen=True)
class JobResult:
    job: Job
    key: str
    status: str  # "hit" (local cache), "fetched" (remote cache), "exported", "failed" or "skipped" (a variant of a failed export)
    seconds: float
    entry: Optional[CacheEntry] = None
    error: Optional[str] = None
    exit_code: int = 0  # a failed job's: 2 for bad input (the worker's error type), 1 otherwise
    variant: Optional[str] = None  # set for an optimised or quantised graph of the job's export
    node: Optional[str] = None  # the Ray node (its address) that ran the job; None: this machine
    log: tuple[str, ...] = ()  # what a failed job's worker logged, shown under its line

    @property
    def label(self) -> str:
        return f"{self.job.label}.{self.variant}" if self.variant else self.job.label

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
    results: tuple[JobResult, ...]  # one per job, in the plan's order
    out: Optional[Path]
    variants: tuple[JobResult, ...] = ()  # one per (job, variant)

    @property
    def exported(self) -> int:
        """Exports and variants made by this build (0: everything came from the cache)."""
        return sum(r.status == "exported" for r in self.results + self.variants)

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results + self.variants if r.status == "failed"]


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """Who runs a framework's jobs (``python``) and the versions their keys hold."""

    python: str
    versions: Versions


def resolve_toolchains(plan: Iterable[Job], python: Optional[str] = None, python_tf: Optional[str] = None,
                       environ: Optional[Mapping[str, str]] = None) -> dict[str, Toolchain]:
    """The toolchain of each framework the plan uses; :class:`FrameworkError` (exit 2) when TF jobs have none.

    ``$HATCH_ONNX_PYTHON`` and ``$HATCH_ONNX_PYTHON_TF`` are read from ``environ`` (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    frameworks = {job.framework for job in plan}
    python = python or environ.get(PYTHON_ENV) or None
    chosen: dict[str, Toolchain] = {}
    if "pt" in frameworks or ("tf" in frameworks and not (python_tf or environ.get(PYTHON_TF_ENV))):
        chosen["pt"] = Toolchain(python or sys.executable, interpreter_versions(python))
    if "tf" in frameworks:
        named = python_tf or environ.get(PYTHON_TF_ENV) or None
        toolchain = Toolchain(named, interpreter_versions(named)) if named else chosen["pt"]
        if not runs_tensorflow(toolchain.versions):
            models = sorted({job.name for job in plan if job.framework == "tf"})
            transformers = toolchain.versions.get("transformers") or "none"
            have = "no TensorFlow" if transformers.startswith("4.") else f"transformers {transformers}"
            raise FrameworkError(
                f"TensorFlow checkpoints ({', '.join(models)}) need an interpreter with transformers 4.x and "
                f"hatch-onnx[tf], and {toolchain.python} has {have}: name one with --python-tf, "
                f"the hook option `python-tf` or ${PYTHON_TF_ENV}"
            )
        chosen["tf"] = toolchain
    return {framework: chosen[framework] for framework in frameworks}


def run_build(
    params_file: Path,
    only: Optional[Iterable[str]] = None,
    jobs: int = 1,
    out: Optional[Path] = None,
    python: Optional[str] = None,
    python_tf: Optional[str] = None,
    package_version: Optional[str] = None,
    progress_stream=None,
    versions: Optional[Mapping[str, Versions]] = None,
    environ: Optional[Mapping[str, str]] = None,
    layouts: Optional[tuple[str, ...]] = None,
    destination: Optional[Path] = None,
    executor: Optional[str] = None,
    ray_address: Optional[str] = None,
) -> BuildResult:
    """Plan, look up, export the misses (``jobs`` workers), materialise into ``out``.

    ``layouts`` (``--layout``, the hook's option) replaces params.yaml's for every model: it
    names and places files in ``out``, never changes a cache key.

    ``versions`` (framework -> toolchain versions) makes the build *lookup only*: keys use
    those versions, nothing is exported, and a miss raises :class:`NotCachedError` (for a
    Hatch build that found no interpreter with the frameworks).

    ``environ`` (default ``os.environ``) is the environment the build reads its interpreters
    from and starts its workers with: the Hatch hook passes its own, without the build
    frontend's isolation, and this process's environment is left alone.

    ``destination`` is where ``out`` ends up when ``out`` is a staging folder (the Hatch hook's
    folder): it is the one checked against the checkpoints and the cache.

    With a signing key (:mod:`hatch_onnx.signing`), uploads and ``out``'s manifest are signed;
    with trusted keys, only signed remote entries are read. Bad key files stop the build first.

    ``executor`` (``--executor``; default params.yaml's ``onnx.executor``, else ``local``) says
    who exports the misses: this machine's worker pool (``jobs`` workers) or a Ray cluster at
    ``ray_address`` (``--ray-address``, else ``$RAY_ADDRESS``, else a Ray instance started
    here). Ray is imported only when a ``ray`` build has misses.

    Raises :class:`BuildError` after every job has finished if any failed; ``out`` is then left
    as it was.
    """
    source = read_params(params_file, environ)
    executor = executor or source.executor
    if ray_address and executor != "ray":
        raise BadInputError(f"--ray-address {ray_address}: the executor is {executor}; add --executor ray "
                            f"(or set onnx.executor: ray in {source.file})")
    plan = resolve_plan(source, only)
    if layouts is not None:
        plan = [dataclasses.replace(job, layouts=as_layouts(layouts)) for job in plan]
    if out is not None:
        refuse_out_overlapping(Path(destination or out), {job.checkpoint for job in plan}, source.cache_root,
                               "--out" if destination is None else "the hook's folder")
    signer, verifier = source.keys.load()
    store = CacheStore(source.cache_root)
    toolchains: dict[str, Toolchain] = {}
    if versions is None:
        toolchains = resolve_toolchains(plan, python, python_tf, environ)
        versions = {framework: toolchain.versions for framework, toolchain in toolchains.items()}
    workers = _Workers(toolchains, jobs, progress_stream, environ, executor, ray_address)
    with default_stat_cache(store.root) as store.stats:
        return _run(source, plan, store, versions, workers, out, package_version, signer, verifier)


@dataclasses.dataclass(frozen=True)
class _Workers:
    """How a build's misses are exported; no toolchains: a lookup-only build, which exports nothing."""

    toolchains: Mapping[str, Toolchain]
    jobs: int
    progress_stream: Any = None
    environ: Optional[Mapping[str, str]] = None
    executor: str = "local"  # or "ray" (hatch_onnx.ray_executor)
    ray_address: Optional[str] = None  # --ray-address; None: $RAY_ADDRESS, else a local Ray instance


# Build results by (job, variant); variant None for the export itself.
_Found = dict[tuple[Job, Optional[str]], JobResult]


def refuse_out_overlapping(out: Path, checkpoints: Iterable[Path], cache_root: Path, name: str = "--out") -> None:
    """:class:`BadInputError` when ``out`` is, contains or lies inside a checkpoint or the cache.

    Writing there would change a checkpoint's fingerprint (a manifest in it) or an entry of the
    cache, and ``cache gc`` would later delete the user's folder with the entry.
    """
    from hatch_onnx.errors import BadInputError

    target = out.resolve()
    for folder, what in [*((Path(c), "the checkpoint") for c in sorted(checkpoints)), (Path(cache_root), "the cache")]:
        other = folder.resolve()
        if target == other or other in target.parents or target in other.parents:
            how = "is" if target == other else "lies inside" if other in target.parents else "contains"
            raise BadInputError(f"{name} {out}: {how} {what} {folder}; write the models somewhere else")


def _run(source, plan: list[Job], store: CacheStore, versions: Mapping[str, Versions], workers: _Workers,
         out: Optional[Path], package_version: Optional[str], signer=None, verifier=None) -> BuildResult:
    """Look every export and variant up (locally, then remotely), export the misses, finish."""
    prints, keyed = _keys(plan, store, versions)
    remote = _ReadThrough(source.remote, signer, verifier)
    found, misses = _lookup(keyed, store, remote)
    found_variants, variant_misses = _lookup_variants(keyed, store, versions, remote)
    found.update(found_variants)
    tasks = misses + variant_misses
    if tasks and not workers.toolchains:
        raise NotCachedError([task.label for task in tasks])
    if tasks:
        store.clean_orphans()  # staging of builds killed mid-export
    export = _export_on_ray(tasks, store, workers, source, remote, prints) if workers.executor == "ray" else _export(tasks, store, workers)
    for result in export:
        found[result.job, result.variant] = result
    remote.upload(found.values())  # write-through, entry.json last (see hatch_onnx.remote)
    return _finish(plan, found, store, prints, out, package_version, signer)


def _lookup(keyed: list[tuple[Job, str, dict]], store: CacheStore, remote: _ReadThrough) -> tuple[_Found, list[Task]]:
    """Each export from the local cache, else the remote; the rest as tasks for the workers."""
    found: _Found = {}
    misses: list[Task] = []
    for job, key, inputs in keyed:
        started = time.perf_counter()
        entry = store.lookup(key)
        if entry is not None:
            found[job, None] = JobResult(job, key, "hit", time.perf_counter() - started, entry)
        else:
            misses.append(Task(job, key, inputs, job.request()))
    _refuse_misses_in_a_read_only_cache(store, [task.label for task in misses])
    fetched, misses = remote.fetch(misses, store)
    return {**found, **fetched}, misses


def _lookup_variants(keyed: list[tuple[Job, str, dict]], store: CacheStore, versions: Mapping[str, Versions],
                     remote: _ReadThrough) -> tuple[_Found, list[Task]]:
    """Each variant, keyed on its export's key, looked up as exports are; the rest as tasks.

    A missing variant is made by the worker that runs its checkpoint's batch, after the batch's
    exports: the source graph is read from its cache entry, the model loaded again for the
    reference outputs.
    """
    found: _Found = {}
    misses: list[Task] = []
    for job, export_key, _ in keyed:
        for variant in job.variants:
            inputs = job.variant_inputs(variant, export_key, versions.get(job.framework, {}))
            key = cache_key(inputs)
            entry = store.lookup(key)
            if entry is not None:
                found[job, variant] = JobResult(job, key, "hit", 0.0, entry, variant=variant)
            else:
                source_graph = store.entry_dir(export_key) / "model.onnx"
                request = {**job.request(), "variant": variant, "settings": inputs["settings"], "source": str(source_graph)}
                misses.append(Task(job, key, inputs, request, variant, source_key=export_key))
    _refuse_misses_in_a_read_only_cache(store, [task.label for task in misses])
    fetched, misses = remote.fetch(misses, store)
    return {**found, **fetched}, misses


def _finish(plan: list[Job], found: _Found, store: CacheStore, prints: Mapping[Path, str], out: Optional[Path],
            package_version: Optional[str], signer=None) -> BuildResult:
    """The build's results in the plan's order; :class:`BuildError` if any failed, else materialised into ``out``."""
    build = BuildResult(tuple(found[job, None] for job in plan), out,
                        tuple(found[job, variant] for job in plan for variant in job.variants if (job, variant) in found))
    if build.failed:
        names = ", ".join(f"{r.label} ({r.error})" for r in build.failed)
        # Bad input everywhere (a checkpoint the worker refused) is bad input for the build too.
        exit_code = 2 if all(r.exit_code == 2 for r in build.failed) else 1
        raise BuildError(f"{len(build.failed)} of {len(plan) + len(build.variants)} job(s) failed: {names}",
                         exit_code=exit_code, result=build)
    if out is not None:
        from hatch_onnx.package import materialize

        materialize(Path(out), build.results, prints, package_version, variants=build.variants, stats=store.stats, signer=signer)
    return build


class _ReadThrough:
    """A build's remote tier, made on the first miss that needs it: fsspec is imported only then."""

    def __init__(self, url: Optional[str], signer=None, verifier=None) -> None:
        self.url = url
        self.keys = (signer, verifier)
        self._tier: Any = None

    def fetch(self, tasks: list[Task], store: CacheStore) -> tuple[_Found, list[Task]]:
        """The tasks whose entries the remote has, now in ``store``, as results; and the tasks left."""
        if not tasks or not self.url:
            return {}, tasks
        started = time.perf_counter()
        fetched = self._connect().fetch({task.key for task in tasks}, store)
        seconds = time.perf_counter() - started
        found: _Found = {}
        for task in tasks:
            if task.key in fetched:
                found[task.job, task.variant] = JobResult(task.job, task.key, "fetched", seconds, fetched[task.key], variant=task.variant)
        return found, [task for task in tasks if task.key not in fetched]

    def upload(self, results: Iterable[JobResult]) -> None:
        """Upload what this build exported (nothing without a miss: then there is no tier).

        Exports made on Ray nodes are skipped: their tasks uploaded them, and the driver fetched them from there.
        """
        if self._tier is not None:
            self._tier.upload(r.entry for r in results if r.status == "exported" and r.node is None)

    def upload_entries(self, entries: list[CacheEntry]) -> None:
        """Upload local entries the remote lacks (the exports a Ray node's variants are made from)."""
        if entries and self.url:
            self._connect().upload(entries)

    def _connect(self) -> Any:
        if self._tier is None:
            from hatch_onnx.remote import Tier

            self._tier = Tier(self.url, _warn, *self.keys)
        return self._tier

    def fetch_entry(self, key: str, store: CacheStore) -> Optional[CacheEntry]:
        """The remote's entry for ``key``, digests checked, now in ``store``; None if absent, bad or unreachable (warned)."""
        if not self.url:
            return None
        return self._connect().fetch([key], store).get(key)


def _refuse_misses_in_a_read_only_cache(store: CacheStore, labels: list[str]) -> None:
    if labels and not store.writable:
        raise BadInputError(f"cache {store.root} is read-only and {len(labels)} job(s) must be exported "
                            f"({', '.join(labels[:4])}{', ...' if len(labels) > 4 else ''}): make it writable or "
                            "point $HATCH_ONNX_CACHE at a writable folder")


def _keys(plan: list[Job], store: CacheStore, versions: Mapping[str, Versions]) -> tuple[dict[Path, str], list[tuple[Job, str, dict]]]:
    """Each checkpoint's fingerprint (through the store's stat cache), and each job's cache key with its inputs."""
    prints = {checkpoint: fingerprint(checkpoint, store.stats) for checkpoint in sorted({job.checkpoint for job in plan})}
    keyed = []
    for job in plan:
        inputs = job.key_inputs(prints[job.checkpoint], versions.get(job.framework, {}))
        keyed.append((job, cache_key(inputs), inputs))
    return prints, keyed


def _warn(message: str) -> None:
    print(f"hatch-onnx: warning: {message}", file=sys.stderr)


def sync_remote(params_file: Path, direction: str, only: Optional[Iterable[str]] = None,
                python: Optional[str] = None, python_tf: Optional[str] = None) -> tuple[list[str], int]:
    """``push`` the plan's local entries to the remote, or ``pull`` those the local cache lacks.

    Returns the labels of the jobs moved and how many of the plan's jobs the other side still
    lacks (not exported yet, or the remote failed, which is reported once as a warning).
    """
    source = read_params(params_file)
    signer, verifier = source.keys.load()
    if not source.remote:
        raise BadInputError(f"{source.file}: no remote cache: set onnx.remote or ${REMOTE_ENV} (an fsspec URL such as s3://bucket/prefix)")
    plan = resolve_plan(source, only)
    store = CacheStore(source.cache_root)
    versions = {framework: toolchain.versions for framework, toolchain in resolve_toolchains(plan, python, python_tf).items()}
    with default_stat_cache(store.root) as store.stats:
        return _sync(source, plan, store, versions, direction, signer, verifier)


def _sync(source, plan: list[Job], store: CacheStore, versions: Mapping[str, Versions], direction: str,
          signer=None, verifier=None) -> tuple[list[str], int]:
    from hatch_onnx.remote import Tier

    _, keyed = _keys(plan, store, versions)
    tier = Tier(source.remote, _warn, signer, verifier)
    labels = {key: [job.label for job, k, _ in keyed if k == key] for _, key, _ in keyed}
    if direction == "push":
        local = {key: entry for _, key, _ in keyed if (entry := store.lookup(key)) is not None}
        moved = tier.upload(local.values())
        lacking = len(keyed) - len(local)
    else:
        wanted = {key for _, key, _ in keyed if store.lookup(key) is None}
        moved = sorted(tier.fetch(wanted, store))
        lacking = len(wanted) - len(moved)
    return sorted(label for key in moved for label in labels[key]), lacking


@dataclasses.dataclass(frozen=True)
class Task:
    """One request for the workers: an export, or a variant of one (``variant`` set)."""

    job: Job
    key: str
    inputs: dict
    request: dict
    variant: Optional[str] = None
    source_key: Optional[str] = None  # a variant's export: made earlier in the same batch, or cached

    @property
    def label(self) -> str:
        return f"{self.job.label}.{self.variant}" if self.variant else self.job.label


# What a report holds that differs between two exports of one key: how long each step took (kept
# in entry.json instead) and where this machine keeps the checkpoint.
_VARYING_REPORT_FIELDS = ("timings", "model")


def _drop_what_varies(report: Path) -> None:
    """Make a cache entry's report.json the same bytes on every machine that exports its key.

    Two machines sharing a remote then upload identical entries (entry.json, the listing, keeps
    the timings), and an interleaved upload never leaves one that fails its digests.
    """
    from hatch_onnx.atomic import write_json

    data = json.loads(report.read_text(encoding="utf-8"))
    write_json(report, {key: value for key, value in data.items() if key not in _VARYING_REPORT_FIELDS})


def _checkpoint_changed(task: Task, store: CacheStore) -> bool:
    """Whether an export's checkpoint differs now from the content its key was made from.

    A sync tool or a second writer may rewrite a checkpoint while its export runs; an entry must
    then never be stored under the key of the content fingerprinted before. A stat per file when
    nothing changed (the stat cache).
    """
    made_from = task.inputs.get("checkpoint") if task.variant is None else None
    return made_from is not None and fingerprint(task.job.checkpoint, store.stats) != made_from


def _export(tasks: list[Task], store: CacheStore, workers: _Workers) -> Iterable[JobResult]:
    """Run the tasks in worker processes, a batch per checkpoint; yields each result as it finishes."""
    if not tasks:
        return
    from hatch_onnx.pool import Batch, run_batches

    batches = [Batch(framework, _size(checkpoint), items) for (framework, checkpoint), items in _by_checkpoint(tasks).items()]

    progress = _Progress(len(tasks), workers.progress_stream)
    try:
        pythons = {framework: toolchain.python for framework, toolchain in workers.toolchains.items()}
        handle = functools.partial(export_task, store=store)
        for result in run_batches(batches, pythons, workers.jobs, handle, environ=workers.environ):
            progress.finished(result)
            yield result
    finally:
        progress.close()


def _by_checkpoint(tasks: list[Task]) -> dict[tuple[str, Path], tuple[Task, ...]]:
    """Each checkpoint's tasks, in the order one worker runs them: exports before variants (which
    read them), the same head class in a row (one load)."""
    grouped: dict[tuple[str, Path], list[Task]] = {}
    for task in tasks:
        grouped.setdefault((task.job.framework, task.job.checkpoint), []).append(task)
    return {group: tuple(sorted(items, key=lambda task: (task.variant is not None, task.job.head))) for group, items in grouped.items()}


def export_task(task: Task, send: Callable[[Mapping[str, Any]], dict], store: CacheStore) -> JobResult:
    """Run one task on a worker (``send``) and put its result in ``store``: the one way a miss is made.

    The local pool calls it on this machine with the build's store; a Ray task
    (:mod:`hatch_onnx.ray_executor`) calls it on its node with that node's store. A variant reads
    its source graph from the store that runs it.
    """
    started = time.perf_counter()

    def result(status: str, entry: Optional[CacheEntry] = None, error: Optional[str] = None, exit_code: int = 0,
               log: Iterable[str] = ()) -> JobResult:
        return JobResult(task.job, task.key, status, time.perf_counter() - started, entry, error, exit_code, task.variant,
                         log=tuple(log))

    request = dict(task.request)
    if task.source_key is not None:
        if store.lookup(task.source_key) is None:
            return result("skipped", error="its export failed")  # the export's failure says why
        request["source"] = str(store.entry_dir(task.source_key) / "model.onnx")
    with store.lock(task.key):
        entry = store.lookup(task.key)  # another build may have made it while we waited
        if entry is not None:
            return result("hit", entry)
        with store.staging() as staging:
            try:
                reply = send({**request, "output": str(staging), "report": str(staging / "report.json")})
            except WorkerDied as exc:
                return result("failed", error=str(exc), exit_code=1)
            if not reply["ok"]:
                return result("failed", error=reply["error"], exit_code=reply.get("exit_code", 1),
                              log=[*reply.get("log", ()), *reply.get("stderr", ())])
            if _checkpoint_changed(task, store):
                return result("failed", exit_code=1, error=f"{task.job.checkpoint} changed while it was exported: "
                              "nothing stored under the key of its former content; build again")
            _drop_what_varies(staging / "report.json")
            entry = store.put(task.key, staging, task.inputs, reply["report"]["timings"])
    return result("exported", entry)


def _export_on_ray(tasks: list[Task], store: CacheStore, workers: _Workers, source, remote: _ReadThrough,
                   prints: Mapping[Path, str]) -> Iterable[JobResult]:
    """Run the tasks on a Ray cluster, a Ray task per checkpoint; yields each result as its entry reaches ``store``.

    Nodes put what they make in their own cache and upload it to the remote; here each entry is
    taken from the local cache (one node: shared) or fetched from the remote, digests checked,
    before it counts. A variant whose export is a local hit gets that export uploaded first, so
    its node can fetch it.
    """
    if not tasks:
        return
    from hatch_onnx import ray_executor

    local_sources = {task.source_key for task in tasks if task.source_key is not None} - {task.key for task in tasks}
    if local_sources and source.remote:
        remote.upload_entries([entry for key in sorted(local_sources) if (entry := store.lookup(key)) is not None])
    batches = [
        ray_executor.RayBatch(framework=framework, checkpoint=str(checkpoint), fingerprint=prints[checkpoint],
                              dtype=items[0].job.dtype, items=items, cache_root=str(store.root), remote=source.remote,
                              keys=source.keys)
        for (framework, checkpoint), items in _by_checkpoint(tasks).items()
    ]
    by_label = {task.label: task for task in tasks}
    progress = _Progress(len(tasks), workers.progress_stream)
    try:
        for done in ray_executor.run_batches(batches, export_task, workers.ray_address):
            task = by_label[done.label]
            for warning in done.warnings:
                _warn(f"node {done.node}: {warning}")
            result = JobResult(task.job, task.key, done.status, done.seconds, None, done.error, done.exit_code, task.variant,
                               done.node, done.log)
            if done.status in ("exported", "hit"):  # made, or found in the node's cache: now on the remote
                entry = store.lookup(task.key) or remote.fetch_entry(task.key, store)
                if entry is None:
                    result = dataclasses.replace(result, status="failed", exit_code=1, error=(
                        f"made on node {done.node}, but its entry is in neither this machine's cache nor the remote "
                        f"{source.remote or '(none configured)'}"))
                else:
                    result = dataclasses.replace(result, entry=entry, status="exported" if done.status == "exported" else "fetched")
            progress.finished(result)
            yield result
    finally:
        progress.close()


def _size(checkpoint: Path) -> int:
    """Bytes of a checkpoint's files (one level: weights sit at the top of a checkpoint folder)."""
    try:
        return sum(entry.stat().st_size for entry in os.scandir(checkpoint) if entry.is_file())
    except OSError:
        return 0


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
        where = f" on {result.node}" if result.node else ""
        if self._live is not None:
            self._live.update(self._task, advance=1, description=f"{result.label} {result.status}{where}")
        else:
            detail = f": {result.error}" if result.error else ""
            self.console.print(f"[{self.done}/{self.total}] {result.label} {result.status}{where} in {result.seconds:.1f} s{detail}",
                               highlight=False, markup=False, soft_wrap=True)  # one line per job, however long
        if result.status == "failed" and result.log:  # the worker's log, wherever it ran
            for line in result.log:
                self.console.print(f"    | {line}", highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
