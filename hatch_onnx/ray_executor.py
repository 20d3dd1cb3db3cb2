"""Builds on a Ray cluster: each checkpoint's misses are one Ray task, results come back through the remote tier.

``hatch-onnx build --executor ray`` (or ``onnx.executor: ray``) plans and looks up as every build
does (:mod:`hatch_onnx.build`): cache hits never leave the driver. Only the misses travel, and
only then is Ray imported:

- **One task per checkpoint.** A :class:`RayBatch` holds a checkpoint's tasks in the order the
  local pool runs them (exports before variants, one load per head class); its Ray task drives the
  same worker (:class:`hatch_onnx.pool.Slot`, ``python -m hatch_onnx.worker``) through the same
  :func:`hatch_onnx.build.export_task`. A Ray worker process keeps its export worker warm for the
  next checkpoint it is given, as a pool thread does.
- **Resources.** A task asks for one CPU and a ``memory`` resource (:func:`memory_estimate`), so
  Ray never packs two exports onto a node whose memory holds one. Ray, not this module, decides
  where and when each task runs.
- **Checked on the node.** Before exporting, a task fingerprints the checkpoint at its path on the
  node, and reads the node's toolchain: either differing from the driver's fails the batch's jobs
  in one line each. The keys were computed by the driver, so a node with another copy (or another
  torch) never produces an entry under them.
- **Results through the remote.** A task puts each entry in its node's cache
  (``$HATCH_ONNX_CACHE`` there, else the driver's cache path) and uploads it to ``onnx.remote``
  (entry.json last); it returns only small records (:class:`NodeResult`). The driver fetches each
  entry from its own cache (one node: shared) or from the remote, digests checked, and
  materialises as today. A cluster of more than one node without a remote is refused before any
  task starts. The driver hands the tasks its remote's settings (:data:`FORWARDED_ENV`) for the
  variables a node does not set itself.
- **Failures.** A task whose node or worker process dies is run again elsewhere (``max_retries``;
  jobs are idempotent by key, and a retry skips what its predecessor already uploaded). A job that
  fails is a result like any other, with its worker's log. Ctrl-C (anything that stops the
  driver's loop) cancels every task still pending or running.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from hatch_onnx.cache import CacheStore, resolve_cache_root
from hatch_onnx.errors import BadInputError, HatchOnnxError, RemoteError
from hatch_onnx.fingerprint import default_stat_cache, fingerprint
from hatch_onnx.signing import Keys
from hatch_onnx.toolchain import PYTHON_ENV, PYTHON_TF_ENV, interpreter_versions

ADDRESS_ENV = "RAY_ADDRESS"

# The memory a task asks Ray for: MEMORY_BASE + MEMORY_PER_WEIGHT_BYTE x the weights' bytes in the
# dtype they are loaded in. Measured on this project's exports (peak resident set of the export
# worker, from wait4):
# - a tiny checkpoint: 410 MB (torch, transformers and onnxruntime imported), plus 105 MB for the
#   Ray worker process that drives it (hatch-onnx and s3fs imported): 515 MB, MEMORY_BASE with room;
# - Qwen2.5-0.5B's shape, 1.84 GiB of float32 weights (bench/large.py): 4.32 GiB, i.e. the base
#   plus 2.1x the weights: MEMORY_PER_WEIGHT_BYTE rounds that up to 2.25.
MEMORY_BASE = 640 * 2**20
MEMORY_PER_WEIGHT_BYTE = 2.25
# Bytes per parameter of the dtypes a checkpoint is stored in (config.json) and loaded in (job.dtype).
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1}
WEIGHT_SUFFIXES = {"pt": (".safetensors", ".bin", ".pt", ".pth"), "tf": (".h5",)}
# A task whose node (or worker process) dies is run again this many times, elsewhere if Ray can.
MAX_RETRIES = 3
# CPUs a task asks for. Ray sets OMP_NUM_THREADS to it in the task's process, which the export
# worker inherits: torch then runs that many threads. 1 packs small exports densely; a cluster of
# large checkpoints gives each export more ($HATCH_ONNX_RAY_CPUS on the driver).
CPUS_ENV = "HATCH_ONNX_RAY_CPUS"
DEFAULT_CPUS_PER_TASK = 1
# The driver's settings of the remote that go with each task, for the variables a node lacks
# (where to reach the store and how; a node's own settings, such as its instance role, win).
FORWARDED_ENV = ("AWS_", "GOOGLE_", "GCSFS_", "AZURE_", "HATCH_ONNX_REMOTE_TIMEOUT")


@dataclasses.dataclass(frozen=True)
class RayBatch:
    """One checkpoint's tasks, as they travel to a node (everything here pickles)."""

    framework: str
    checkpoint: str  # the path every node must have (a shared file system)
    fingerprint: str  # the driver's: the content the tasks' keys were made from
    dtype: str  # what the model is loaded in, for the memory estimate
    items: tuple  # hatch_onnx.build.Task, in the order one worker runs them
    cache_root: str  # the driver's cache: the node's when it sets none (one node: shared)
    remote: Optional[str]  # where results go; None only on a one-node cluster
    keys: Keys = Keys()  # the driver's key files, at the same paths on every node: uploads are signed there


@dataclasses.dataclass(frozen=True)
class NodeResult:
    """One job's outcome, as a node reports it: plain data, the entry itself is in a cache and on the remote."""

    label: str
    status: str  # "exported", "hit" (the node's cache or the remote had it), "failed", "skipped"
    seconds: float
    node: Optional[str] = None
    error: Optional[str] = None
    exit_code: int = 0
    log: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # what the remote tier warned of on the node (a malformed entry...)
    started: float = 0.0  # unix time the job began on its node
    finished: float = 0.0


# --- the driver -------------------------------------------------------------------------


def memory_estimate(checkpoint: str | Path, dtype: str = "float32", framework: str = "pt") -> int:
    """The bytes of memory an export of ``checkpoint`` peaks at (see :data:`MEMORY_BASE`), for Ray's ``memory`` resource.

    Weights are the top-level weight files of the job's framework (shards included), scaled from
    the dtype config.json says they are stored in to the one they are loaded in.
    """
    folder = Path(checkpoint)
    try:
        files = [entry for entry in os.scandir(folder) if entry.is_file()]
    except OSError:
        files = []
    weights = [entry.stat().st_size for entry in files if entry.name.endswith(WEIGHT_SUFFIXES.get(framework, ()))]
    stored_bytes = sum(weights) if weights else sum(entry.stat().st_size for entry in files)
    loaded = stored_bytes * DTYPE_BYTES.get(dtype, 4) / _stored_dtype_bytes(folder)
    return int(MEMORY_BASE + MEMORY_PER_WEIGHT_BYTE * loaded)


def _stored_dtype_bytes(checkpoint: Path) -> int:
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
        stored = config.get("torch_dtype") or config.get("dtype") or "float32"  # transformers 4 and 5 spell it so
    except (OSError, ValueError, AttributeError):
        stored = "float32"
    return DTYPE_BYTES.get(str(stored), 4)


def task_options(batch: RayBatch) -> dict[str, Any]:
    """What a batch's Ray task asks for: its resources, its retries, a name for Ray's own tools."""
    return {
        "num_cpus": cpus_per_task(),
        "memory": memory_estimate(batch.checkpoint, batch.dtype, batch.framework),
        "max_retries": MAX_RETRIES,  # node or worker death only: a failed job is a result, not an exception
        "retry_exceptions": False,
        "name": f"hatch-onnx:{Path(batch.checkpoint).name}",
    }


def cpus_per_task(environ: Optional[Mapping[str, str]] = None) -> float:
    """``$HATCH_ONNX_RAY_CPUS`` (default 1); :class:`BadInputError` naming it when it is not a positive number."""
    value = (os.environ if environ is None else environ).get(CPUS_ENV) or str(DEFAULT_CPUS_PER_TASK)
    try:
        cpus = float(value)
    except ValueError:
        cpus = 0.0
    if not cpus > 0:
        raise BadInputError(f"${CPUS_ENV}={value}: the CPUs each Ray task asks for must be a positive number")
    return int(cpus) if cpus.is_integer() else cpus


def _ray() -> Any:
    import importlib.util

    if importlib.util.find_spec("ray") is None:  # checked before anything is set up for it
        raise BadInputError("the ray executor needs Ray on this machine and every node: pip install 'hatch-onnx[ray]'")
    import ray

    return ray


def connect(address: Optional[str]) -> str:
    """Attach this process to the cluster at ``address`` (else ``$RAY_ADDRESS``, else a new local instance); its name."""
    import importlib.util
    import logging

    target = address or os.environ.get(ADDRESS_ENV) or "local"
    if importlib.util.find_spec("ray") is None:
        _ray()  # says how to install it
    if target == "local" and "ray" not in sys.modules:  # Ray reads its authentication mode as it is imported
        _private_token()
    ray = _ray()
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if target == "local":
        # address="local": never attach to someone else's cluster that happens to run on this machine.
        options.update(include_dashboard=False)
    if target != "local":
        _probe(target)
    try:
        ray.init(address=target, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"Ray cluster {target}: cannot connect ({reason}); check --ray-address or ${ADDRESS_ENV}") from None
    return "a local Ray instance" if target == "local" else target


def _probe(address: str, timeout: float = 10.0) -> None:
    """:class:`BadInputError` unless something accepts connections at ``address`` (``host:port``).

    ``ray.init`` retries an unreachable cluster for minutes, line after line of warnings; a
    mistyped address deserves one line now. Other forms (``auto``, ``ray://...``) are left to Ray.
    """
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BadInputError(f"Ray cluster {address}: nothing answers there ({exc.strerror or exc}); "
                            f"check --ray-address or ${ADDRESS_ENV}") from None


_SET_HERE: list[str] = []  # environment variables connect() set for a Ray instance of its own


def _private_token() -> None:
    """Token authentication for a Ray instance of our own, its token in the environment its processes inherit.

    Left to itself, ``ray.init`` saves a token in ``~/.ray/auth_token``, and every later
    ``ray start --head`` on the machine then demands it from nodes joining by address. A token
    the user set (or ``RAY_AUTH_MODE``) is theirs and stays.
    """
    import secrets

    if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        _SET_HERE.extend(["RAY_AUTH_MODE", "RAY_AUTH_TOKEN"])  # removed again when the build disconnects


def forwarded_env(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The remote's settings in ``environ`` (default ``os.environ``) that tasks use where their node has none."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if name.startswith(FORWARDED_ENV)}


def run_batches(batches: Sequence[RayBatch], handle: Callable, address: Optional[str] = None) -> Iterator[NodeResult]:
    """Run every batch as a Ray task; yield each job's :class:`NodeResult` as its task finishes.

    ``handle(task, send, store)`` makes one job (:func:`hatch_onnx.build.export_task`); it is
    shipped to the nodes by reference, so every node needs this hatch-onnx installed.
    :class:`BadInputError` (exit 2) before any task starts: no Ray, no cluster at ``address``, or
    more than one node and no remote.
    """
    if not batches:
        return
    cpus_per_task()  # a bad setting is bad input: said before connecting
    where = connect(address)  # first: a Ray instance of our own is set up before Ray is imported
    ray = _ray()
    pending: dict[Any, RayBatch] = {}
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        if len(nodes) > 1 and not all(batch.remote for batch in batches):
            raise BadInputError(f"{where} has {len(nodes)} nodes and this build has no remote cache, through which nodes "
                                "return their exports: set onnx.remote or $HATCH_ONNX_REMOTE (an fsspec URL every node reaches)")
        run = ray.remote(_run_batch)
        env = forwarded_env()
        for batch in batches:
            pending[run.options(**task_options(batch)).remote(batch, handle, env)] = batch
        while pending:
            # a timeout, so that Ctrl-C is seen between waits whatever Ray does with signals meanwhile
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                batch = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries spent (nodes kept dying), or the task itself crashed
                    reason = " ".join(str(exc).split())[:300]
                    results = [NodeResult(task.label, "failed", 0.0, error=f"its Ray task failed: {reason}", exit_code=1)
                               for task in batch.items]
                yield from results
    except BaseException:  # Ctrl-C, a failure here, or the caller stopping: nothing may run on without a driver
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.shutdown()
        while _SET_HERE:
            os.environ.pop(_SET_HERE.pop(), None)


# --- on a node --------------------------------------------------------------------------

# This Ray worker process's warm export worker: the next batch it is given reuses it (Ray keeps a
# job's worker processes between tasks); the process ending ends it (the worker dies with its parent).
_SLOTS: dict[str, Any] = {}
_VERSIONS: dict[str, Mapping[str, Optional[str]]] = {}


def _run_batch(batch: RayBatch, handle: Callable, env: Mapping[str, str]) -> list[NodeResult]:
    """A Ray task: check the checkpoint and toolchain, then make each of the batch's jobs and upload it."""
    import functools

    import ray

    from hatch_onnx.pool import DEFAULT_RECYCLE_BYTES, Slot
    from hatch_onnx.remote import Remote

    for name, value in env.items():
        os.environ.setdefault(name, value)
    node = ray.util.get_node_ip_address()
    # Without a remote (one node) the entries must land where the driver reads: its own cache.
    root = resolve_cache_root(batch.cache_root, Path.cwd()) if batch.remote else Path(batch.cache_root)
    store = CacheStore(root)
    warnings: list[str] = []
    try:  # a signing key the node cannot read fails its jobs, as a differing checkpoint does
        signer, verifier = batch.keys.load()
        key_refusal = None
    except BadInputError as exc:
        signer = verifier = None
        key_refusal = f"node {node}: {exc}"
    remote = Remote(batch.remote, warn=warnings.append, signer=signer, verifier=verifier) if batch.remote else None
    python = _python(batch.framework)
    results: list[NodeResult] = []
    with default_stat_cache(store.root) as store.stats:
        refusal = key_refusal or _refusal(batch, store, python, node)
        if refusal is not None:
            return [NodeResult(task.label, "failed", 0.0, node, refusal, 2) for task in batch.items]
        slot = _SLOTS.setdefault("worker", Slot({}, None))
        slot.pythons[batch.framework] = python  # a batch of the other framework replaces the worker (see Slot.send)
        send = functools.partial(slot.send, batch.framework)
        for task in batch.items:
            started = time.time()
            result = _run_one(task, send, store, remote, handle, node)
            results.append(dataclasses.replace(result, warnings=tuple(warnings), started=started, finished=time.time()))
            warnings.clear()
        if _size(batch.checkpoint) > DEFAULT_RECYCLE_BYTES:  # as the pool does: the next batch starts empty
            slot.close()
    return results


def _run_one(task: Any, send: Callable, store: CacheStore, remote: Any, handle: Callable, node: str) -> NodeResult:
    """One job on this node: skipped if the remote has it already (a retry), else made and uploaded."""
    started = time.perf_counter()

    def result(status: str, error: Optional[str] = None, exit_code: int = 0, log: tuple[str, ...] = ()) -> NodeResult:
        return NodeResult(task.label, status, time.perf_counter() - started, node, error, exit_code, log)

    try:
        if remote is not None and remote.has(task.key):  # uploaded by this batch's earlier attempt on a node that died
            return result("hit")
        if task.source_key is not None and remote is not None and store.lookup(task.source_key) is None:
            remote.fetch(task.source_key, store)  # a variant's export, made elsewhere: absent, it is skipped below
        made = handle(task, send, store)
        if made.status in ("exported", "hit") and remote is not None:
            remote.upload(made.entry)
    except RemoteError as exc:
        return result("failed", f"the remote {remote.url} failed on node {node}: {exc}", 1)
    return result(made.status, made.error, made.exit_code, made.log)


def _refusal(batch: RayBatch, store: CacheStore, python: str, node: str) -> Optional[str]:
    """Why this node must not make the batch's jobs (one line), or None: its checkpoint or toolchain is not the driver's."""
    try:
        found = fingerprint(batch.checkpoint, store.stats)
    except HatchOnnxError as exc:
        return f"node {node} cannot read the checkpoint: {exc}"
    if found != batch.fingerprint:
        return (f"{batch.checkpoint} on node {node} is not the driver's copy (fingerprint {found[:12]}, "
                f"the driver's {batch.fingerprint[:12]}): not exported there; every node must see the same checkpoint at this path")
    if python not in _VERSIONS:
        try:
            _VERSIONS[python] = interpreter_versions(None if python == sys.executable else python)
        except HatchOnnxError as exc:
            return f"node {node}: {exc}"
    mine = _VERSIONS[python]
    for task in batch.items:
        for name, wanted in task.inputs["versions"].items():
            if mine.get(name) != wanted:
                return (f"node {node}'s {python} has {name} {mine.get(name) or 'not installed'}, the driver's keys "
                        f"{wanted or 'none'}: not exported there; install the driver's toolchain on every node")
    return None


def _python(framework: str) -> str:
    """The node's interpreter for a framework's exports: its own settings, else the Ray worker's."""
    names = (PYTHON_TF_ENV, PYTHON_ENV) if framework == "tf" else (PYTHON_ENV,)
    return next((os.environ[name] for name in names if os.environ.get(name)), sys.executable)


def _size(checkpoint: str) -> int:
    try:
        return sum(entry.stat().st_size for entry in os.scandir(checkpoint) if entry.is_file())
    except OSError:
        return 0
