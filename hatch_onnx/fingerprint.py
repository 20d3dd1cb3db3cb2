"""Content fingerprints of checkpoints, and the stat cache that makes them cheap.

A checkpoint (a file or a folder) is fingerprinted by what it holds, never by where it is
or when it was written: ``xxh3_128`` over the sorted list of ``(relative POSIX path, size,
xxh3_128 of content)`` of its regular files. Copying, touching or moving a checkpoint keeps
its fingerprint; changing one byte or renaming one file changes it.

Re-reading gigabytes of weights on every build would dominate a build whose jobs all hit
the cache, so :class:`StatCache` remembers ``(path, inode, size, mtime_ns) -> digest`` in
SQLite, as DVC's state database does: an unchanged file is stat'ed, not read.

Light core: standard library, xxhash and nothing else.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat as stat_mod
import threading
import time
from pathlib import Path
from types import TracebackType

import xxhash

from hatch_onnx.errors import CheckpointError

__all__ = [
    "CHUNK_SIZE",
    "SKIP_DIRS",
    "StatCache",
    "default_stat_cache",
    "file_digest",
    "fingerprint",
    "fingerprint_files",
]

# Large enough that per-call overhead vanishes, small enough that the chunk read is still in
# the CPU cache when xxh3 hashes it: 1-4 MiB measured best (warm reads), 8 MiB a little and
# 32 MiB much slower. bench/fingerprint.py checks the result against a plain read.
CHUNK_SIZE = 4 * 1024 * 1024

# Tool and VCS folders change without the checkpoint changing (git gc, pyc files).
SKIP_DIRS = frozenset({".git", ".hg", ".svn", ".dvc", "__pycache__"})

# A file whose mtime is this close to "now" may still be written within the same mtime tick
# with the same size (the "racy git" problem); such a stat result cannot vouch for content.
# 2 s covers the coarsest common granularity (FAT, some network file systems).
RACY_WINDOW_NS = 2_000_000_000

# Re-read a file that changed while it was being hashed at most this many times.
_READ_ATTEMPTS = 3


def file_digest(path: str | Path) -> str:
    """``xxh3_128`` hex digest of a file's content, streamed without per-chunk copies."""
    hasher = xxhash.xxh3_128()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    # buffering=0: readinto fills our buffer straight from the OS, no second copy in BufferedReader.
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            hasher.update(view[:size])
    return hasher.hexdigest()


class StatCache:
    """Persistent ``(absolute path, inode, size, mtime_ns) -> digest`` map in SQLite.

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
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        # Builds fingerprint from a thread pool; one connection guarded by a lock is enough.
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable enough in WAL mode: a crash may lose the last rows, never corrupt.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS digests ("
            " path TEXT PRIMARY KEY, inode INTEGER NOT NULL, size INTEGER NOT NULL,"
            " mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL)"
        )

    def _trustworthy(self, st: os.stat_result) -> bool:
        return st.st_mtime_ns < time.time_ns() - self.racy_window_ns

    def get(self, path: str | Path, st: os.stat_result) -> str | None:
        """The digest stored for this exact file state, or ``None``."""
        if self._db is None or not self._trustworthy(st):
            return None
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT inode, size, mtime_ns, digest FROM digests WHERE path = ?",
                    (os.path.abspath(path),),
                ).fetchone()
        except sqlite3.Error:
            return None
        if row is None or tuple(row[:3]) != (_inode(st), st.st_size, st.st_mtime_ns):
            return None
        return row[3]

    def put(self, path: str | Path, st: os.stat_result, digest: str) -> None:
        """Remember ``digest`` for this file state (ignored for racy files)."""
        if self._db is None or not self._trustworthy(st):
            return
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO digests (path, inode, size, mtime_ns, digest) VALUES (?, ?, ?, ?, ?)",
                    (os.path.abspath(path), _inode(st), st.st_size, st.st_mtime_ns, digest),
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
        if (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns):
            if stat_cache is not None:
                stat_cache.put(path, after, digest)
            return after.st_size, digest
    raise CheckpointError(f"{path}: changed while being read", path)


def fingerprint_files(path: str | Path, stat_cache: StatCache | None = None) -> list[tuple[str, int, str]]:
    """Sorted ``(relative POSIX path, size, xxh3_128)`` of a checkpoint's files.

    For a single file the list has one entry, named by the file's name.
    """
    root = Path(path)
    try:
        is_dir = root.is_dir()
        exists = is_dir or root.is_file()
    except OSError:
        exists = False
    if not exists:
        raise CheckpointError(f"{path}: not found", path)
    files = _regular_files(root) if is_dir else [(root.name, root)]
    result = []
    for relative, file in sorted(files):
        try:
            size, digest = _digest(file, stat_cache)
        except CheckpointError:
            raise
        except OSError as error:
            raise CheckpointError(f"{file}: cannot read ({error.strerror or error})", file) from error
        result.append((relative, size, digest))
    return result


def fingerprint(path: str | Path, stat_cache: StatCache | None = None) -> str:
    """``xxh3_128`` hex fingerprint of a checkpoint's content (a file or a folder)."""
    files = fingerprint_files(path, stat_cache)
    # Canonical: a JSON list of [path, size, digest] triples, no whitespace. surrogateescape
    # keeps file names that are not valid UTF-8 hashable as their original bytes.
    canonical = json.dumps(files, separators=(",", ":"), ensure_ascii=False)
    return xxhash.xxh3_128_hexdigest(canonical.encode("utf-8", "surrogateescape"))
