"""The cache's remote tier: entries shared through any fsspec filesystem (S3, GCS, Azure, file, SSH).

The remote holds the local store's layout, under the URL's path::

    s3://bucket/prefix/
    └── v1/3f/3fa9…e1/
        ├── model.onnx           (+ model.onnx.data, report.json): uploaded first
        └── entry.json           uploaded last: the commit marker. No entry.json, no entry

A build looks up locally, then remotely, then exports (and uploads). A fetched entry is
downloaded into a local staging folder, every file checked against the remote ``entry.json``
(size and xxh3_128, through :func:`hatch_onnx.fingerprint.file_digest`), and only then put in
the local store: a partial download or a tampered object never reaches it, and a tampered
entry is exported again, with a warning naming its remote key. Two machines uploading one key
write the same files (the report leaves out what varies), so concurrent uploads are harmless.

Digests catch damage, not a writer who fixes them up. With keys (:mod:`hatch_onnx.signing`),
every uploaded ``entry.json`` carries an Ed25519 signature of its content, and an entry that is
unsigned or not signed by a trusted key is refused like a tampered one. A machine with only
public keys reads and never uploads.

A remote is never required: the first failure (unreachable, forbidden, misconfigured) is
reported once, and the build carries on with the local tier; a later run catches up.
Credentials and endpoints come from each filesystem's own configuration (for S3: the AWS
variables and profiles, ``AWS_ENDPOINT_URL`` for S3-compatible stores). fsspec and the
filesystem packages (extras ``s3``, ``gcs``, ``azure``) are imported only when a remote is used.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from hatch_onnx.cache import ENTRY_FILE, LAYOUT, CacheEntry, CacheStore
from hatch_onnx.errors import RemoteError
from hatch_onnx.fingerprint import file_digest
from hatch_onnx.signing import Signer, Verifier, entry_payload

# Transfers at once: object stores answer many requests in parallel; 2 cores hash what arrives.
TRANSFERS = 4
# Files at least this large get a progress bar (on a terminal).
PROGRESS_BYTES = 64 * 2**20
# Seconds to wait for a connection, and for each answer, before a remote counts as unavailable:
# a stalled endpoint (one that accepts and never answers) must not hang a build.
TIMEOUT_ENV = "HATCH_ONNX_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT = 30.0


def timeout_options(protocol: str, timeout: float) -> dict[str, Any]:
    """The fsspec filesystem options that bound every request of ``protocol`` by ``timeout`` seconds.

    Each filesystem names them its own way; a protocol without any (``file``) needs none.
    """
    if protocol in ("s3", "s3a"):  # s3fs -> botocore: no retry of its own (s3fs retries, see Remote.fs)
        return {"config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout, "retries": {"max_attempts": 1}}}
    if protocol in ("gs", "gcs"):
        return {"timeout": timeout}
    if protocol in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)}}
    if protocol in ("ssh", "sftp"):
        return {"timeout": timeout}
    return {}


class Remote:
    """One remote tier: fetch, upload and list entries. Thread-safe; errors raise :class:`RemoteError`."""

    def __init__(self, url: str, warn: Callable[[str], None] = lambda message: None, timeout: Optional[float] = None,
                 signer: Optional[Signer] = None, verifier: Optional[Verifier] = None) -> None:
        import os

        self.url = url.rstrip("/")
        self.warn = warn
        self.signer = signer  # signs what this machine uploads
        self.verifier = verifier  # set: only entries signed by a trusted key are read
        self.timeout = timeout if timeout is not None else float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
        self._fs: Any = None
        self._root = ""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    @property
    def fs(self) -> Any:
        with self._lock:
            if self._fs is None:
                try:
                    import fsspec

                    protocol = self.url.split("://", 1)[0] if "://" in self.url else "file"
                    self._fs, self._root = fsspec.core.url_to_fs(self.url, **timeout_options(protocol, self.timeout))
                    if isinstance(getattr(self._fs, "retries", None), int):
                        # s3fs retries a timed-out call 5 times with backoff (40 s for a 2 s timeout): a
                        # stall reported after one retry leaves the build to go on locally.
                        self._fs.retries = 1
                except Exception as exc:  # an unknown protocol, a missing package (s3fs...), bad options
                    raise RemoteError(_reason(exc)) from None
            return self._fs

    def _path(self, key: str, name: str = "") -> str:
        path = f"{self._root}/{LAYOUT}/{key[:2]}/{key}"
        return f"{path}/{name}" if name else path

    # --- reading ------------------------------------------------------------------------

    def fetch(self, key: str, store: CacheStore, progress: Optional["Progress"] = None) -> Optional[CacheEntry]:
        """The remote entry for ``key``, checked and put in ``store``; ``None`` if absent, malformed or tampered.

        A malformed or tampered entry is skipped alone, with a warning naming it; only the
        remote itself failing (unreachable, forbidden) raises :class:`RemoteError`.
        """
        fs = self.fs
        try:
            try:
                raw = fs.cat_file(self._path(key, ENTRY_FILE))
            except FileNotFoundError:
                return None
            record = _entry_record(raw, key)
            if record is None:
                self.warn(f"remote entry {self._path(key)} is malformed: skipped, exporting it again")
                return None
            unsigned = self._signature_problem(key, record)
            if unsigned:
                self.warn(f"remote entry {self._path(key)}: {unsigned}: not used, exporting it again")
                return None
            files = record["files"]
            with store.staging() as staging:
                for name, (size, digest) in files.items():
                    target = staging / name
                    fs.get_file(self._path(key, name), str(target), callback=_callback(progress, name, size))
                    if target.stat().st_size != size or file_digest(target) != digest:
                        self.warn(f"remote entry {self._path(key)}: {name} does not match its entry.json "
                                  "(tampered or damaged): not used, exporting it again")
                        return None
                entry = store.put(key, staging, record["inputs"], record["timings"])
            if dict(entry.files) != files:  # the local put re-hashed what was checked above
                return None
            return entry
        except RemoteError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RemoteError(_reason(exc)) from None
        except Exception as exc:  # botocore and friends raise their own types
            raise RemoteError(_reason(exc)) from None

    def keys(self) -> list[str]:
        """Keys of the complete entries (those with an ``entry.json``)."""
        fs = self.fs
        try:
            found = fs.glob(f"{self._root}/{LAYOUT}/*/*/{ENTRY_FILE}")
        except Exception as exc:  # noqa: BLE001 - see fetch
            raise RemoteError(_reason(exc)) from None
        return sorted(Path(path).parent.name for path in found)

    def has(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(key, ENTRY_FILE)))
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001 - see fetch
            raise RemoteError(_reason(exc)) from None

    # --- writing ------------------------------------------------------------------------

    def upload(self, entry: CacheEntry, progress: Optional["Progress"] = None) -> bool:
        """Upload a local entry unless the remote has it, whole; whether it uploaded. ``entry.json`` goes last.

        A remote entry whose ``entry.json`` lists other files, or whose files have other sizes
        (damaged, cut short), is replaced. A local remote (``file://``) gets its folders made, and
        no write follows a symlink out of its root.
        """
        if self._intact(entry):
            return False
        fs = self.fs
        if not self._prepare_folder(entry.key):
            return False
        try:
            for name, (size, _) in sorted(entry.files.items()):
                fs.put_file(str(entry.path / name), self._path(entry.key, name), callback=_callback(progress, name, size))
            fs.pipe_file(self._path(entry.key, ENTRY_FILE), self._entry_json(entry))
        except Exception as exc:  # noqa: BLE001 - see fetch
            raise RemoteError(_reason(exc)) from None
        return True

    def _entry_json(self, entry: CacheEntry) -> bytes:
        """The remote ``entry.json``: the local one, with this machine's signature when it has a key."""
        raw = (entry.path / ENTRY_FILE).read_bytes()
        if self.signer is None:
            return raw
        record = json.loads(raw)
        record["signature"] = self.signer.sign(entry_payload(entry.key, entry.files, entry.inputs))
        return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def _signature_problem(self, key: str, record: dict) -> Optional[str]:
        """Why a remote entry's signature is not good enough here; ``None`` without keys, or when it is."""
        if self.verifier is None:
            return None
        return self.verifier.problem(entry_payload(key, record["files"], record["inputs"]), record["signature"])


    def _intact(self, entry: CacheEntry) -> bool:
        """The remote has ``entry``: the same files, sizes and digests listed, and files of those sizes."""
        fs = self.fs
        try:
            try:
                record = _entry_record(fs.cat_file(self._path(entry.key, ENTRY_FILE)), entry.key)
            except FileNotFoundError:
                return False
            if record is None or record["files"] != dict(entry.files) or self._signature_problem(entry.key, record):
                return False
            return all(int(fs.info(self._path(entry.key, name))["size"]) == size for name, (size, _) in entry.files.items())
        except FileNotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001 - see fetch
            raise RemoteError(_reason(exc)) from None

    def _prepare_folder(self, key: str) -> bool:
        """On a local remote, make the entry's folder; False (with a warning) if it resolves outside the remote's root."""
        if not _is_local(self.fs):
            return True
        import os

        root, folder = os.path.realpath(self._root), self._path(key)
        # Resolved before anything is made: makedirs through a symlinked v1/<xx> would create outside.
        if os.path.commonpath([root, os.path.realpath(folder)]) != root:
            self.warn(f"remote entry {folder} resolves outside the remote {self._root} (a symlink): not uploaded")
            return False
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise RemoteError(_reason(exc)) from None
        return True


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _entry_record(raw: bytes, key: str) -> Optional[dict]:
    """A remote ``entry.json`` as ``{"files": {name: (size, digest)}, "inputs", "timings", "signature"}``, or None if malformed.

    Malformed: not JSON (or nested deeper than Python parses), another key, files not a mapping of
    plain names to a size and a digest, or without ``model.onnx`` and ``report.json`` (an entry
    missing either would be put locally and trip every later build).
    """
    try:
        record = json.loads(raw)
        files = {str(name): (int(info["size"]), str(info["xxh3_128"])) for name, info in record["files"].items()}
        inputs, timings = dict(record["inputs"]), dict(record["timings"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    if record.get("key") != key or any(Path(name).name != name or name == ENTRY_FILE for name in files):
        return None
    if not {"model.onnx", "report.json"} <= files.keys() or any(size < 0 for size, _ in files.values()):
        return None
    return {"files": files, "inputs": inputs, "timings": timings, "signature": record.get("signature")}


class Tier:
    """A build's use of the remote: concurrent transfers, and the first failure reported once.

    After a failure the tier is off for the rest of the process: a build with an unreachable
    remote pays for one timeout, not one per job.
    """

    def __init__(self, url: Optional[str], warn: Callable[[str], None], signer: Optional[Signer] = None,
                 verifier: Optional[Verifier] = None) -> None:
        self.warn = warn
        self.remote = Remote(url, warn, signer=signer, verifier=verifier) if url else None
        self._lock = threading.Lock()
        self._told_read_only = False

    def _failed(self, exc: RemoteError) -> None:
        with self._lock:
            if self.remote is not None:
                self.warn(f"remote cache {self.remote.url} unavailable ({exc}); going on with the local cache only")
                self.remote = None

    def fetch(self, keys: Iterable[str], store: CacheStore) -> dict[str, CacheEntry]:
        """The entries of ``keys`` found remotely, now in the local store."""
        return self._map(lambda remote, key, progress: remote.fetch(key, store, progress), keys)

    def upload(self, entries: Iterable[CacheEntry]) -> list[str]:
        """Upload entries the remote lacks; the keys uploaded. A machine that trusts keys but holds none uploads nothing."""
        entries = list(entries)
        if self.remote is not None and entries and self.remote.verifier is not None and self.remote.signer is None:
            if not self._told_read_only:
                self._told_read_only = True
                self.warn(f"remote cache {self.remote.url}: not uploading {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: "
                          f"this machine has trusted keys but no signing key ($HATCH_ONNX_SIGNING_KEY or onnx.signing_key), "
                          "and readers accept signed entries only")
            return []
        done = self._map(lambda remote, entry, progress: entry.key if remote.upload(entry, progress) else None, entries)
        return sorted(done.values())

    def _map(self, work: Callable[[Remote, Any, "Progress"], Any], items: Iterable[Any]) -> dict[Any, Any]:
        items = list(items)
        if self.remote is None or not items:
            return {}
        remote = self.remote
        try:
            remote.fs  # connect (and fail) once, before the threads
        except RemoteError as exc:
            self._failed(exc)
            return {}
        found: dict[Any, Any] = {}
        with Progress() as progress, ThreadPoolExecutor(max_workers=TRANSFERS) as pool:
            futures = {pool.submit(work, remote, item, progress): item for item in items}
            for future, item in futures.items():
                try:
                    result = future.result()
                except RemoteError as exc:
                    self._failed(exc)
                    continue
                if result is not None:
                    found[getattr(item, "key", item)] = result
        return found


class Progress:
    """Progress bars for large transfers, on a terminal only (rich); a no-op elsewhere."""

    def __init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True)
        self._bars: Any = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bars is not None:
            self._bars.stop()

    def task(self, name: str, size: int) -> Optional[Callable[[int], None]]:
        if size < PROGRESS_BYTES or not self._console.is_terminal:
            return None
        if self._bars is None:
            from rich.progress import Progress as Bars

            self._bars = Bars(console=self._console, transient=True)
            self._bars.start()
        task = self._bars.add_task(name, total=size)
        return lambda done: self._bars.update(task, completed=done)


def _callback(progress: Optional[Progress], name: str, size: int) -> Any:
    """An fsspec callback feeding a progress bar, or fsspec's no-op one."""
    from fsspec.callbacks import Callback, NoOpCallback

    update = progress.task(name, size) if progress is not None else None
    if update is None:
        return NoOpCallback()

    class _Bar(Callback):
        def call(self, *args: Any, **kwargs: Any) -> None:
            update(self.value)

    return _Bar(size=size)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
