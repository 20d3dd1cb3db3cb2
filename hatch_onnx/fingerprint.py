"""Content fingerprints of checkpoints, and the stat cache that makes them cheap.

A checkpoint (a file or a folder) is fingerprinted by what it holds, never by where it is
or when it was written: ``xxh3_128`` over the sorted list of ``(relative POSIX path, size,
xxh3_128 of content)`` of its regular files. Copying, touching or moving a checkpoint keeps
its fingerprint; changing one byte or renaming one file changes it.

Re-reading gigabytes of weights on every build would dominate a build whose jobs all hit
the cache, so :class:`StatCache` remembers ``(path, inode, size, mtime_ns, ctime_ns) -> digest`` in
SQLite, as DVC's state database does: an unchanged file is stat'ed, not read.

Every content digest (checkpoints, cache entries, shipped models) goes through
:func:`file_digest`, so one read path serves them all. What it costs, and why it is built
the way it is, is measured by ``bench/fingerprint.py`` (findings in its docstring).

Light core: standard library, xxhash and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat as stat_mod
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import xxhash

from hatch_onnx.errors import CheckpointError

__all__ = [
    "CHUNK_SIZE",
    "HASH_THREADS",
    "PARALLEL_MIN_BYTES",
    "SKIP_DIRS",
    "StatCache",
    "default_stat_cache",
    "file_digest",
    "fingerprint",
    "fingerprint_files",
]

# Large enough that per-call overhead vanishes, small enough that the chunk read is still in
# the CPU cache when xxh3 hashes it: 1-4 MiB measured best (warm reads), 8 MiB a little and
# 32 MiB much slower; in fresh processes 4 MiB beat 1 MiB, 256 KiB and 128 KiB (fewer read
# calls; the copy out of the page cache, not the hash, is what costs). bench/fingerprint.py
# checks the result against a plain read.
CHUNK_SIZE = 4 * 1024 * 1024

# Files of a folder are hashed on this many threads (fewer if the process may use fewer
# CPUs). readinto and xxh3's update release the GIL, so two files are read and hashed on two
# cores at once. 4 shards of 256 MiB on 2 cores: 32 ms instead of 50 ms with a core to spare;
# with other processes on one or both cores, 0.95x-1.65x of one thread (median 1.05x in 17
# samples): never more than 5 % worse.
HASH_THREADS = 2

# Below this many bytes to read, starting threads costs more than it can save; a folder whose
# files all hit the stat cache never starts them.
PARALLEL_MIN_BYTES = 64 * 1024 * 1024

# Tool and VCS folders change without the checkpoint changing (git gc, pyc files).
SKIP_DIRS = frozenset({".git", ".hg", ".svn", ".dvc", "__pycache__"})

# A file whose mtime is this close to "now" may still be written within the same mtime tick
# with the same size (the "racy git" problem); such a stat result cannot vouch for content.
# 2 s covers the coarsest common granularity (FAT, some network file systems).
RACY_WINDOW_NS = 2_000_000_000

# Re-read a file that changed while it was being hashed at most this many times.
_READ_ATTEMPTS = 3

_T = TypeVar("_T")


# Read buffers are reused across calls and threads: a fresh bytearray per file is allocated,
# zeroed and page-faulted in every time (~50 us and several faults per small file, 10x the
# cost of reading it; 1024 faults for a 4 MiB one). A call takes a spare buffer and puts it
# back (list pop and append are atomic), so a new hashing thread reuses a faulted-in buffer
# too. At most _MAX_SPARE_BUFFERS are kept: 8 MiB for the life of the process.
_spare_buffers: list[bytearray] = []
_MAX_SPARE_BUFFERS = 2


def file_digest(path: str | Path) -> str:
    """``xxh3_128`` hex digest of a file's content, streamed without per-chunk copies.

    THE read path for content digests: checkpoints, cache entries and shipped models all come
    through here. Safe to call from several threads at once.
    """
    try:
        buffer = _spare_buffers.pop()
    except IndexError:
        buffer = bytearray(CHUNK_SIZE)
    if len(buffer) != CHUNK_SIZE:  # CHUNK_SIZE changed (tests)
        buffer = bytearray(CHUNK_SIZE)
    try:
        hasher = xxhash.xxh3_128()
        # buffering=0: readinto fills our buffer straight from the OS, no second copy in BufferedReader.
        with open(path, "rb", buffering=0) as handle, memoryview(buffer) as view:
            _advise_sequential(handle.fileno())
            while size := handle.readinto(buffer):
                hasher.update(view[:size])
        return hasher.hexdigest()
    finally:
        if len(_spare_buffers) < _MAX_SPARE_BUFFERS:
            _spare_buffers.append(buffer)


def _advise_sequential(fd: int) -> None:
    """Tell the kernel we read front to back: Linux doubles the read-ahead window.

    Only cold reads (a checkpoint not in the page cache) can gain: the reads that were not in
    the page cache came out ahead in three interleaved runs, but inside disk noise;
    warm reads measured the same with or without. One system call per file, so kept.
    """
    advise = getattr(os, "posix_fadvise", None)  # not on macOS or Windows
    if advise is not None:
        with contextlib.suppress(OSError):  # a hint: a file system may refuse it
            advise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


# v2: with the change time (the first table, ``digests``, had none; an old database keeps it, unread).
_TABLE = "digests_v2"


class StatCache:
    """Persistent ``(absolute path, inode, size, mtime_ns, ctime_ns) -> digest`` map in SQLite.

    The change time is in the record, as in git's index: an in-place edit that restores the
    mtime (``os.utime``) still moves the ctime, which no user call can set back.

    WAL mode lets several processes (parallel builds, the Hatch hook beside a CLI) read while
    one writes; a busy database is waited for, not failed on. The cache is an optimisation
    only: any SQLite error reads as a miss and a lost write is ignored, so a broken or
    read-only state database slows a build down but never fails it.

    Racy files: a stat result whose mtime is within :data:`RACY_WINDOW_NS` of now (or in the
    future) is neither stored nor trusted, since the file may still change without its stat
    changing. Such a file is re-read until it has aged.

    One instance per process: do not share an open instance across ``fork``.
    """

    def __init__(self, db_path: str | Path, *, racy_window_ns: int = RACY_WINDOW_NS) -> None:
        self.db_path = Path(db_path)
        self.racy_window_ns = racy_window_ns
        # Builds fingerprint from a thread pool; one connection guarded by a lock is enough.
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable enough in WAL mode: a crash may lose the last rows, never corrupt.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
                " path TEXT PRIMARY KEY, inode INTEGER NOT NULL, size INTEGER NOT NULL,"
                " mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, digest TEXT NOT NULL)"
            )
            self._db = db
        except (OSError, sqlite3.Error):
            # A read-only cache (a CI cache restored read-only): read what it remembers, if it
            # can be read at all, and remember nothing new. Every digest is then computed.
            with contextlib.suppress(sqlite3.Error):
                if self.db_path.is_file():
                    self._db = sqlite3.connect(f"{self.db_path.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                               isolation_level=None, check_same_thread=False)
                    self._db.execute(f"SELECT 1 FROM {_TABLE} LIMIT 1")
            if self._db is not None and not self._readable():
                self._db = None

    def _readable(self) -> bool:
        try:
            self._db.execute(f"SELECT 1 FROM {_TABLE} LIMIT 1")
            return True
        except sqlite3.Error:
            return False

    def digest(self, path: str | Path) -> str:
        """The file's ``xxh3_128``: remembered for its exact state, else read (and remembered)."""
        st = os.stat(path)
        found = self.get(path, st)
        if found is None:
            found = file_digest(path)
            self.put(path, st, found)
        return found

    def _trustworthy(self, st: os.stat_result) -> bool:
        return st.st_mtime_ns < time.time_ns() - self.racy_window_ns

    def get(self, path: str | Path, st: os.stat_result) -> str | None:
        """The digest stored for this exact file state, or ``None``."""
        if self._db is None or not self._trustworthy(st):
            return None
        try:
            with self._lock:
                row = self._db.execute(
                    f"SELECT inode, size, mtime_ns, ctime_ns, digest FROM {_TABLE} WHERE path = ?",
                    (os.path.abspath(path),),
                ).fetchone()
        except sqlite3.Error:
            return None
        if row is None or tuple(row[:4]) != (_inode(st), st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None
        return row[4]

    def put(self, path: str | Path, st: os.stat_result, digest: str) -> None:
        """Remember ``digest`` for this file state (ignored for racy files)."""
        if self._db is None or not self._trustworthy(st):
            return
        try:
            with self._lock:
                self._db.execute(
                    f"INSERT OR REPLACE INTO {_TABLE} (path, inode, size, mtime_ns, ctime_ns, digest) VALUES (?, ?, ?, ?, ?, ?)",
                    (os.path.abspath(path), _inode(st), st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest),
                )
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> StatCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StatCache({str(self.db_path)!r})"


def _inode(st: os.stat_result) -> int:
    # SQLite integers are signed 64-bit; some file systems hand out inodes above 2**63.
    return st.st_ino - 2**64 if st.st_ino >= 2**63 else st.st_ino


def default_stat_cache(cache_root: Path) -> StatCache:
    """The stat cache that lives beside a cache store: ``<cache_root>/state/stat.db``."""
    return StatCache(Path(cache_root) / "state" / "stat.db")


def _regular_files(root: Path) -> list[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of every regular file under ``root``, following links.

    Symlinks are followed (Hugging Face cache snapshots are made of them), except a link to a
    folder that is already being walked, which would loop forever.
    """
    found: list[tuple[str, Path]] = []

    def walk(folder: Path, prefix: str, ancestors: frozenset[tuple[int, int]]) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                relative = f"{prefix}{entry.name}"
                try:
                    st = entry.stat()  # follows symlinks
                except FileNotFoundError:
                    raise CheckpointError(f"{entry.path}: broken symlink", entry.path) from None
                if stat_mod.S_ISDIR(st.st_mode):
                    identity = (st.st_dev, st.st_ino)
                    if entry.name not in SKIP_DIRS and identity not in ancestors:
                        walk(Path(entry.path), f"{relative}/", ancestors | {identity})
                elif stat_mod.S_ISREG(st.st_mode):
                    found.append((relative, Path(entry.path)))
                # sockets, fifos, devices: not part of a checkpoint

    top = root.stat()
    walk(root, "", frozenset({(top.st_dev, top.st_ino)}))
    return found


def _digest(path: Path, stat_cache: StatCache | None) -> tuple[int, str]:
    """``(size, digest)`` of one file, from the stat cache when it can vouch for it."""
    for _ in range(_READ_ATTEMPTS):
        before = os.stat(path)
        if stat_cache is not None and (cached := stat_cache.get(path, before)) is not None:
            return before.st_size, cached
        digest = file_digest(path)
        after = os.stat(path)
        # A file rewritten while we read it has no single digest; hash it again.
        if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns,
                                                                                 before.st_ctime_ns):
            if stat_cache is not None:
                stat_cache.put(path, after, digest)
            return after.st_size, digest
    raise CheckpointError(f"{path}: changed while being read", path)


def fingerprint_files(path: str | Path, stat_cache: StatCache | None = None) -> list[tuple[str, int, str]]:
    """Sorted ``(relative POSIX path, size, xxh3_128)`` of a checkpoint's files.

    For a single file the list has one entry, named by the file's name. The files that must
    be read (not vouched for by the stat cache) are hashed on up to :data:`HASH_THREADS`
    threads; the result does not depend on how many.
    """
    root = Path(path)
    try:
        is_dir = root.is_dir()
        exists = is_dir or root.is_file()
    except OSError:
        exists = False
    if not exists:
        raise CheckpointError(f"{path}: not found", path)
    files = sorted(_regular_files(root) if is_dir else [(root.name, root)])
    # Stat pass first, serial: a file the stat cache vouches for costs a stat and a lookup, and
    # a checkpoint that is all hits (every build after the first) never starts a thread.
    found: dict[str, tuple[int, str]] = {}
    to_read: list[tuple[str, Path, int]] = []
    for relative, file in files:
        st = _checked(os.stat, file)
        if stat_cache is not None and (cached := stat_cache.get(file, st)) is not None:
            found[relative] = (st.st_size, cached)
        else:
            to_read.append((relative, file, st.st_size))
    for (relative, _, _), size_digest in zip(to_read, _read_digests(to_read, stat_cache)):
        found[relative] = size_digest
    return [(relative, *found[relative]) for relative, _ in files]


def _hash_threads() -> int:
    """Threads for hashing a folder: :data:`HASH_THREADS`, capped by the CPUs we may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity on macOS or Windows
        cpus = os.cpu_count() or 1
    return max(1, min(HASH_THREADS, cpus))


def _read_digests(files: list[tuple[str, Path, int]], stat_cache: StatCache | None) -> list[tuple[int, str]]:
    """``(size, digest)`` of each file read, in order; on several threads when that pays.

    The calling thread is one of the hashing threads, and plain threads take the next file
    from a shared iterator: no ``concurrent.futures``, whose import alone costs ~7 ms.
    """
    threads = min(_hash_threads(), len(files))
    if threads < 2 or sum(size for _, _, size in files) < PARALLEL_MIN_BYTES:
        return [_checked(_digest, file, stat_cache) for _, file, _ in files]

    # Largest first, so that one big file does not start last and leave a thread idle.
    pending = iter(sorted(range(len(files)), key=lambda index: files[index][2], reverse=True))
    lock = threading.Lock()
    results: list[tuple[int, str] | None] = [None] * len(files)
    errors: dict[int, BaseException] = {}

    def work() -> None:
        while not errors:  # after a failure, start no more files; reads under way finish
            with lock:
                index = next(pending, None)
            if index is None:
                return
            try:
                results[index] = _checked(_digest, files[index][1], stat_cache)
            except BaseException as error:  # re-raised in the calling thread below
                errors[index] = error

    helpers = [threading.Thread(target=work, name="hatch-onnx-hash", daemon=True) for _ in range(threads - 1)]
    for helper in helpers:
        helper.start()
    try:
        work()
    finally:
        for helper in helpers:
            helper.join()
    if errors:
        raise errors[min(errors)]  # the first file in order, whichever thread was faster
    return [result for result in results if result is not None]  # all set: no thread failed


def _checked(function: Callable[..., _T], file: Path, *args: Any) -> _T:
    """``function(file, *args)``, an :class:`OSError` reported as the file's ``CheckpointError``."""
    try:
        return function(file, *args)
    except CheckpointError:
        raise
    except OSError as error:
        raise CheckpointError(f"{file}: cannot read ({error.strerror or error})", file) from error


def fingerprint(path: str | Path, stat_cache: StatCache | None = None) -> str:
    """``xxh3_128`` hex fingerprint of a checkpoint's content (a file or a folder)."""
    files = fingerprint_files(path, stat_cache)
    # Canonical: a JSON list of [path, size, digest] triples, no whitespace. surrogateescape
    # keeps file names that are not valid UTF-8 hashable as their original bytes.
    canonical = json.dumps(files, separators=(",", ":"), ensure_ascii=False)
    return xxhash.xxh3_128_hexdigest(canonical.encode("utf-8", "surrogateescape"))
