"""The content-addressed store of exports.

An export is filed under its cache key (:func:`cache_key`, a hash of everything that decides
its bytes), so a build only has to compute keys to know what it can skip::

    <root>/
    ├── v1/                                  layout version: a new layout gets a new folder
    │   └── 3f/                              key[:2], so no folder holds too many entries
    │       └── 3fa9…e1/                     one entry, named by its full key
    │           ├── model.onnx               read-only, like every file of an entry
    │           ├── model.onnx.data          only when the graph stores weights externally
    │           ├── report.json              validation report
    │           └── entry.json               {"key", "files": {name: {"size", "xxh3_128"}},
    │                                         "inputs", "timings", "created"}
    ├── tmp/                                 staging folders, trash on its way out
    ├── locks/
    │   └── 3fa9…e1.lock                     one builder per key; the others wait, then hit
    └── state/
        └── stat.db                          digests by file state (hatch_onnx.fingerprint): of
                                             checkpoints, and of entry files once verified

An entry appears only by one atomic ``rename`` of a fully written staging folder, and leaves
by a rename into ``tmp/`` before it is deleted, so a reader never sees half an entry. A hit
is served only when ``entry.json`` parses and every file it lists has the listed size and
``xxh3_128``; the digest of a file whose (inode, size, mtime_ns) was already verified comes
from ``stat.db``, as git's index and DVC's state do, so a warm check is a stat per file. A bad
entry is removed (or, in a read-only cache, skipped), never repaired or packaged.

Light core: standard library, xxhash and filelock only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from filelock import FileLock

import xxhash

from hatch_onnx.atomic import remove_tree, staging_folder
from hatch_onnx.errors import BadInputError, CorruptCacheEntryError
from hatch_onnx.fingerprint import file_digest

if TYPE_CHECKING:  # pragma: no cover
    from hatch_onnx.fingerprint import StatCache

__all__ = [
    "CACHE_ENV",
    "DEFAULT_CACHE_DIRNAME",
    "SCHEMA_VERSION",
    "CacheEntry",
    "CacheStore",
    "cache_key",
    "resolve_cache_root",
]

# Bump when the meaning of a key's inputs or of an entry changes: old entries then miss.
SCHEMA_VERSION = 2  # 2: decoders take position_ids (GPT-2, GPT-Neo, GPT-J, CodeGen)
LAYOUT = "v1"
CACHE_ENV = "HATCH_ONNX_CACHE"
DEFAULT_CACHE_DIRNAME = ".hatch-onnx-cache"
ENTRY_FILE = "entry.json"
MODEL_FILE = "model.onnx"
# A staging folder untouched this long, whose process is gone, is the remains of a crash.
STALE_TMP_SECONDS = 3600.0

_KEY = re.compile(r"[0-9a-f]{32}")


def cache_key(inputs: Mapping[str, Any]) -> str:
    """``xxh3_128`` hex over canonical JSON of ``{"schema": SCHEMA_VERSION, "inputs": inputs}``.

    The schema version is added here, not by callers, so that no caller can forget it; it
    is nested beside the inputs so that no input name can collide with it. ``inputs`` must
    be JSON data (str, int, float, bool, None, lists, string-keyed dicts); NaN is refused
    because it has no canonical JSON form.
    """
    canonical = json.dumps(
        {"schema": SCHEMA_VERSION, "inputs": inputs},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return xxhash.xxh3_128_hexdigest(canonical.encode("utf-8"))


def resolve_cache_root(configured: str | Path | None, base_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where the cache lives: ``$HATCH_ONNX_CACHE``, else ``configured``, else a default.

    A relative configured path (params.yaml ``onnx.cache``) is relative to ``base_dir``
    (the folder of params.yaml), not to the current directory; a relative environment value
    is relative to the current directory, as environment paths are.
    """
    if env := (os.environ if environ is None else environ).get(CACHE_ENV):
        return Path(env).expanduser().absolute()
    if configured is not None and str(configured):
        return Path(base_dir) / Path(configured).expanduser()
    return Path(base_dir) / DEFAULT_CACHE_DIRNAME


@dataclass(frozen=True)
class CacheEntry:
    """A trusted entry, as listed in its ``entry.json``."""

    key: str
    path: Path
    files: Mapping[str, tuple[int, str]]  # name -> (size, xxh3_128)
    inputs: Mapping[str, Any]
    timings: Mapping[str, float]
    created: float  # unix time of the put
    last_used: float  # unix time of the last lookup that hit (the entry folder's mtime)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def size(self) -> int:
        """Bytes of the entry's files, ``entry.json`` excluded."""
        return sum(size for size, _ in self.files.values())


class CacheStore:
    """Lookup, atomic put, per-key lock, verify and gc over one cache root.

    The build protocol, safe across processes::

        with store.lock(key):
            entry = store.lookup(key)
            if entry is None:
                with store.staging() as folder:
                    ...  # write model.onnx (and report.json) into folder
                    entry = store.put(key, folder, inputs, timings)
    """

    def __init__(self, root: str | Path, stats: "StatCache | None" = None) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise BadInputError(f"cache {self.root}: not a folder (check $HATCH_ONNX_CACHE and onnx.cache)")
        # Where verified digests are remembered by file state: a hit is served only after its
        # files' digests match entry.json, and this keeps that to a stat per file when warm.
        self.stats = stats

    @property
    def writable(self) -> bool:
        """Whether entries can be added (a cache restored read-only still serves its hits)."""
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return os.access(folder, os.W_OK)

    def _digest(self, path: Path) -> str:
        return self.stats.digest(path) if self.stats is not None else file_digest(path)

    def __repr__(self) -> str:
        return f"CacheStore({str(self.root)!r})"

    @property
    def entries_dir(self) -> Path:
        return self.root / LAYOUT

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def entry_dir(self, key: str) -> Path:
        # Keys reach us from the command line too: never let one name a path outside the store.
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise BadInputError(f"{key!r} is not a cache key (32 lower-case hex digits)")
        return self.entries_dir / key[:2] / key

    # --- reading ------------------------------------------------------------------------

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` if present and sound; a bad one is removed and ``None`` returned.

        Sound means: ``entry.json`` parses, and every file it lists has its size and its
        ``xxh3_128`` (through :attr:`stats`, so a file unchanged since it was verified is a stat).
        """
        folder = self.entry_dir(key)
        if not folder.exists():
            return None
        try:
            entry = self._open(key, folder, rehash=True)
        except CorruptCacheEntryError:
            with contextlib.suppress(OSError):  # a read-only cache cannot drop it: it is just not served
                self._discard(folder)
            return None
        # The folder's mtime is the entry's "last used" for gc (atime is unreliable under
        # noatime/relatime). Best effort: a read-only shared cache still serves hits.
        with contextlib.suppress(OSError):
            os.utime(folder)
            entry = replace(entry, last_used=time.time())
        return entry

    def require(self, key: str, *, rehash: bool = False) -> CacheEntry:
        """The entry for ``key``, or :class:`CorruptCacheEntryError` if it is missing or bad.

        For callers that know the entry should be there (packaging a manifest's entries). A
        bad entry is removed before raising; ``rehash`` also checks every file's digest.
        """
        folder = self.entry_dir(key)
        if not folder.exists():
            raise CorruptCacheEntryError(f"cache entry {key} is missing", key=key)
        try:
            return self._open(key, folder, rehash=rehash)
        except CorruptCacheEntryError:
            self._discard(folder)
            raise

    def ls(self) -> list[CacheEntry]:
        """Sound entries, oldest first. Read-only: bad entries are skipped, not removed."""
        entries = []
        for folder in self._entry_folders():
            with contextlib.suppress(CorruptCacheEntryError):
                entries.append(self._open(folder.name, folder))
        return sorted(entries, key=lambda entry: (entry.created, entry.key))

    def size(self) -> int:
        """Bytes on disk of every file under ``v1/`` (sound or not; tmp, locks and state excluded)."""
        total = 0
        for folder in self._entry_folders():
            for file in folder.iterdir():
                with contextlib.suppress(OSError):
                    total += file.lstat().st_size
        return total

    # --- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder under ``tmp/`` to write an entry into; removed unless :meth:`put` took it."""
        # Same file system as the entries, so put's rename is atomic; pid in the name lets
        # gc tell a live builder's folder from a crashed one's.
        with staging_folder(self.tmp_dir, f"stage-{os.getpid()}-") as folder:
            yield folder

    def put(
        self, key: str, staging_dir: Path, inputs: Mapping[str, Any], timings: Mapping[str, float]
    ) -> CacheEntry:
        """Seal a staging folder (from :meth:`staging`) as the entry for ``key``.

        The folder must be flat. Its files are hashed and listed in ``entry.json``, made
        read-only, and the folder is renamed into place in one step. If a sound entry is
        already there (another builder won), the staging folder is discarded and that entry
        returned: both are the same export, since the key decides the bytes.

        No fsync: after a power loss a torn entry shows up as a size or digest mismatch at
        its next lookup and is rebuilt; fsyncing gigabytes every put
        is not worth that.
        """
        destination = self.entry_dir(key)
        staging_dir = Path(staging_dir)
        if staging_dir.resolve().parent != self.tmp_dir.resolve():
            raise ValueError(f"{staging_dir}: not a staging folder of {self.root} (use CacheStore.staging())")
        if not (staging_dir / MODEL_FILE).is_file():
            raise ValueError(f"{staging_dir}: no {MODEL_FILE} to put in the cache")
        files: dict[str, dict[str, Any]] = {}
        for file in sorted(staging_dir.iterdir()):
            if file.name == ENTRY_FILE:
                continue
            if file.is_symlink() or not file.is_file():
                raise ValueError(f"{file}: a cache entry holds regular files only")
            files[file.name] = {"size": file.stat().st_size, "xxh3_128": file_digest(file)}
        created = time.time()
        record = {
            "key": key,
            "files": files,
            "inputs": dict(inputs),
            "timings": dict(timings),
            "created": created,
        }
        (staging_dir / ENTRY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for file in staging_dir.iterdir():
            file.chmod(0o444)  # an entry is immutable; a stray write fails loudly instead of corrupting it
        staging_dir.chmod(0o755)  # staging folders are made 0o700; other users of a shared cache must read it

        destination.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                # rename, not replace: it refuses to clobber a non-empty folder, which is
                # exactly "someone else already put this key".
                os.rename(staging_dir, destination)
                return self._open(key, destination)
            except OSError:
                if not destination.exists():
                    raise
            existing = self.lookup(key)  # removes the existing entry if it is bad
            if existing is not None:
                remove_tree(staging_dir)
                return existing
        raise CorruptCacheEntryError(f"cache entry {key}: could not be put in place", key=key)

    def lock(self, key: str, timeout: float | None = None) -> FileLock:
        """An inter-process lock for building ``key`` (``timeout=None`` waits forever).

        Lock files are never deleted: unlinking a lock file another process is waiting on
        would let two builders in. They are empty, so they cost an inode each.
        """
        from filelock import FileLock  # imported here: a fully cached build never takes a lock

        locks = self.root / "locks"
        self.entry_dir(key)  # validates the key
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(locks / f"{key}.lock", timeout=-1 if timeout is None else timeout)

    # --- maintenance --------------------------------------------------------------------

    def verify(self, key: str | None = None) -> list[tuple[str, str]]:
        """Re-hash every file of every entry (or of ``key``); remove the bad ones.

        Returns ``(key, reason)`` for each removed entry. A missing ``key`` is not an error
        here (nothing to verify); callers that need it present use :meth:`require`.
        """
        folders = [self.entry_dir(key)] if key is not None else list(self._entry_folders())
        removed = []
        for folder in folders:
            if not folder.exists():
                continue
            try:
                self._open(folder.name, folder, rehash=True)
            except CorruptCacheEntryError as error:
                self._discard(folder)
                removed.append((folder.name, str(error)))
        return removed

    def gc(self, max_age_seconds: float | None = None, max_size_bytes: int | None = None) -> list[str]:
        """Remove entries unused for ``max_age_seconds``, then the least recently used until
        the store holds at most ``max_size_bytes``. Returns the removed keys.

        "Used" means put or hit by :meth:`lookup` (the entry folder's mtime), so an old
        export that every build still hits survives. Bad entries are removed too, and so
        are staging folders left by crashed builders. Run it between builds: an entry
        being copied out by a concurrent build can vanish under it.
        """
        now = time.time()
        self._clean_tmp(now)
        removed: list[str] = []
        alive: list[tuple[float, int, Path]] = []
        for folder in self._entry_folders():
            try:
                entry = self._open(folder.name, folder)
            except CorruptCacheEntryError:
                self._discard(folder)
                removed.append(folder.name)
                continue
            if max_age_seconds is not None and now - entry.last_used > max_age_seconds:
                self._discard(folder)
                removed.append(entry.key)
            else:
                alive.append((entry.last_used, entry.size, folder))
        if max_size_bytes is not None:
            total = sum(size for _, size, _ in alive)
            for _, size, folder in sorted(alive, key=lambda item: item[0]):
                if total <= max_size_bytes:
                    break
                self._discard(folder)
                removed.append(folder.name)
                total -= size
        return removed

    # --- internals ----------------------------------------------------------------------

    def _entry_folders(self) -> Iterator[Path]:
        if not self.entries_dir.is_dir():
            return
        for shard in sorted(self.entries_dir.iterdir()):
            if shard.is_dir() and not shard.is_symlink():
                for folder in sorted(shard.iterdir()):
                    if _KEY.fullmatch(folder.name) and folder.name[:2] == shard.name and folder.is_dir():
                        yield folder

    def _open(self, key: str, folder: Path, *, rehash: bool = False) -> CacheEntry:
        """Read and check an entry; :class:`CorruptCacheEntryError` names what is wrong."""

        def corrupt(reason: str) -> CorruptCacheEntryError:
            return CorruptCacheEntryError(f"cache entry {key}: {reason}", key=key)

        try:
            record = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
            files = {name: (int(info["size"]), str(info["xxh3_128"])) for name, info in record["files"].items()}
            entry = CacheEntry(
                key=record["key"],
                path=folder,
                files=MappingProxyType(files),
                inputs=MappingProxyType(dict(record["inputs"])),
                timings=MappingProxyType(dict(record["timings"])),
                created=float(record["created"]),
                last_used=folder.stat().st_mtime,
            )
        except FileNotFoundError:
            raise corrupt(f"{ENTRY_FILE} is missing") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise corrupt(f"{ENTRY_FILE} is unreadable ({error})") from None
        if entry.key != key:
            raise corrupt(f"{ENTRY_FILE} is for key {entry.key}")
        if MODEL_FILE not in files:
            raise corrupt(f"{MODEL_FILE} is not listed")
        for name, (size, digest) in files.items():
            if Path(name).name != name or name in ("", ".", ".."):
                raise corrupt(f"bad file name {name!r}")  # would point outside the entry
            file = folder / name
            try:
                actual = file.stat().st_size
            except OSError:
                raise corrupt(f"{name} is missing") from None
            if actual != size:
                raise corrupt(f"{name} has {actual} bytes, expected {size}")
            if rehash and self._digest(file) != digest:
                raise corrupt(f"{name} content changed (xxh3_128 mismatch)")
        return entry

    def _discard(self, folder: Path) -> None:
        """Remove a folder: first out of sight (one rename into tmp/), then from disk."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        trash = self.tmp_dir / f"trash-{os.getpid()}-{os.urandom(6).hex()}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            return  # someone else removed it first
        remove_tree(trash)

    def clean_orphans(self) -> None:
        """Remove what killed builds of this machine left in ``tmp/`` (their process is gone)."""
        self._clean_tmp(time.time(), any_age=True)

    def _clean_tmp(self, now: float, any_age: bool = False) -> None:
        if not self.tmp_dir.is_dir():
            return
        for folder in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                young = now - folder.lstat().st_mtime <= STALE_TMP_SECONDS
                if (young and not any_age) or _owner_alive(folder.name):
                    continue
                if any_age and not re.fullmatch(r"(?:stage|trash)-\d+-.*", folder.name):
                    continue  # no owner to ask: left for gc's age rule
                if folder.is_dir() and not folder.is_symlink():
                    remove_tree(folder)
                else:
                    folder.unlink()


def _owner_alive(name: str) -> bool:
    """Whether the process named in ``stage-<pid>-…`` still runs on this machine."""
    match = re.fullmatch(r"(?:stage|trash)-(\d+)-.*", name)
    if match is None:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except PermissionError:
        return True  # alive, owned by another user
    except (ProcessLookupError, OverflowError):
        return False
    return True
