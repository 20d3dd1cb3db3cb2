from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
import xxhash

from hatch_onnx import fingerprint as fp
from hatch_onnx.errors import CheckpointError
from hatch_onnx.fingerprint import StatCache, default_stat_cache, file_digest, fingerprint, fingerprint_files

FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": os.urandom(3000),
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
}
AN_HOUR_AGO = time.time() - 3600


def pattern(seed: str, size: int) -> bytes:
    """Deterministic bytes (a sha256 counter stream): the same on every platform and Python."""
    blocks = (hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(-(-size // 32)))
    return b"".join(blocks)[:size]


# A small sharded checkpoint whose fingerprint was computed by the code before issue 16
# (single-threaded 4 MiB readinto loop). Cache keys embed fingerprints: if this changes,
# every existing cache entry silently misses. Sizes straddle 64 KiB / 1 MiB / 4 MiB chunk
# boundaries and include an empty file and a non-ASCII folder name.
GOLDEN_FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 32}\n',
    "empty.txt": b"",
    "model-00001-of-00003.safetensors": pattern("shard-1", 3 * 2**20 + 12345),
    "model-00002-of-00003.safetensors": pattern("shard-2", 2**20),
    "model-00003-of-00003.safetensors": pattern("shard-3", 777),
    "tokenizer/vocab.txt": "[PAD]\n[UNK]\nh\u00e9llo\n".encode(),
    "\u00dcn\u00efcode dir/weights.bin": pattern("nested", 65536 + 1),
}
GOLDEN_FINGERPRINT = "6dfc9bed7ce76b3ccc67d1bd84f36440"
GOLDEN_DIGESTS = {
    "config.json": "577c578ba36b9ff91a9ac172d9cf6273",
    "empty.txt": "99aa06d3014798d86001c324468d497f",
    "model-00001-of-00003.safetensors": "30b7ecb4660bdc08c6a1df63cf16314e",
    "model-00002-of-00003.safetensors": "f2390f93ec3bcc750731b5b54947e85e",
    "model-00003-of-00003.safetensors": "27f062430013ca12b933938d3b6eca46",
    "tokenizer/vocab.txt": "ee331fad465482da67bf16452a2a2075",
    "\u00dcn\u00efcode dir/weights.bin": "f3413b08d0dc07e5bc7a95cbc9a1116a",
}


def age(path: Path, when: float = AN_HOUR_AGO) -> None:
    """Move mtime out of the racy window, so the stat cache may trust it."""
    os.utime(path, (when, when))


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    root = tmp_path / "ckpt"
    for name, data in FILES.items():
        file = root / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        age(file)
    return root


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    root = tmp_path / "golden"
    for name, data in GOLDEN_FILES.items():
        file = root / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
    return root


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files fingerprint() actually reads."""
    reads: list[str] = []
    real = fp.file_digest

    def counting(path: str | Path) -> str:
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(fp, "file_digest", counting)
    return reads


def test_file_list_is_sorted_relative_posix_with_sizes_and_digests(ckpt: Path) -> None:
    expected = sorted((name, len(data), xxhash.xxh3_128_hexdigest(data)) for name, data in FILES.items())
    assert fingerprint_files(ckpt) == expected
    assert len(fingerprint(ckpt)) == 32


def test_fingerprint_of_a_known_folder_is_pinned(golden: Path) -> None:
    # Existing cache keys stay valid only while this holds.
    assert fingerprint_files(golden) == sorted(
        (name, len(GOLDEN_FILES[name]), digest) for name, digest in GOLDEN_DIGESTS.items()
    )
    assert fingerprint(golden) == GOLDEN_FINGERPRINT


def test_single_file_is_listed_by_its_name(ckpt: Path) -> None:
    file = ckpt / "model.safetensors"
    data = FILES["model.safetensors"]
    assert fingerprint_files(file) == [("model.safetensors", len(data), xxhash.xxh3_128_hexdigest(data))]


def test_file_digest_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(10_000)
    (tmp_path / "blob").write_bytes(data)
    monkeypatch.setattr(fp, "CHUNK_SIZE", 7)  # many chunks, a short last one
    assert file_digest(tmp_path / "blob") == xxhash.xxh3_128_hexdigest(data)


def test_file_digest_reuses_its_buffer_without_leaking_the_last_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The read buffer outlives each call; only the bytes read into it this time may be hashed.
    monkeypatch.setattr(fp, "CHUNK_SIZE", 64)
    long, short = os.urandom(1000), b"abc"
    (tmp_path / "long").write_bytes(long)
    (tmp_path / "short").write_bytes(short)
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "long") == xxhash.xxh3_128_hexdigest(long)
    buffer = fp._spare_buffers[-1]
    assert len(buffer) == 64
    assert file_digest(tmp_path / "short") == xxhash.xxh3_128_hexdigest(short)
    assert file_digest(tmp_path / "empty") == xxhash.xxh3_128_hexdigest(b"")
    assert fp._spare_buffers[-1] is buffer  # no new allocation per file


def test_file_digest_ignores_a_refused_read_ahead_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse, raising=False)
    (tmp_path / "blob").write_bytes(b"weights")
    assert file_digest(tmp_path / "blob") == xxhash.xxh3_128_hexdigest(b"weights")


@pytest.mark.parametrize("name", sorted(FILES))
def test_one_changed_byte_changes_the_fingerprint(ckpt: Path, name: str) -> None:
    before = fingerprint(ckpt)
    data = bytearray(FILES[name])
    data[len(data) // 2] ^= 1
    (ckpt / name).write_bytes(data)
    assert fingerprint(ckpt) != before


def test_renaming_a_file_changes_the_fingerprint(ckpt: Path) -> None:
    before = fingerprint(ckpt)
    (ckpt / "config.json").rename(ckpt / "config2.json")
    assert fingerprint(ckpt) != before


def test_touching_a_file_keeps_the_fingerprint(ckpt: Path) -> None:
    before = fingerprint(ckpt)
    os.utime(ckpt / "model.safetensors")
    assert fingerprint(ckpt) == before


def test_location_does_not_matter(ckpt: Path, tmp_path: Path) -> None:
    assert fingerprint(ckpt) == fingerprint(ckpt.rename(tmp_path / "elsewhere"))


def test_vcs_and_tool_folders_are_ignored(ckpt: Path) -> None:
    before = fingerprint(ckpt)
    for folder in (".git", ".dvc", "__pycache__", "tokenizer/.git"):
        (ckpt / folder).mkdir()
        (ckpt / folder / "HEAD").write_text("ref: refs/heads/main\n")
    assert fingerprint(ckpt) == before


def test_symlinked_folder_loop_is_not_followed_forever(ckpt: Path) -> None:
    before = fingerprint(ckpt)
    (ckpt / "tokenizer" / "up").symlink_to(ckpt, target_is_directory=True)
    assert fingerprint(ckpt) == before


def test_symlinked_files_count_by_their_content(ckpt: Path, tmp_path: Path) -> None:
    # Hugging Face cache snapshots are symlinks into blobs/.
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    (ckpt / "linked.bin").symlink_to(blob)
    assert ("linked.bin", 7, xxhash.xxh3_128_hexdigest(b"weights")) in fingerprint_files(ckpt)


@pytest.fixture
def parallel(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Force the threaded path for any folder; yields the ids of the threads that read files."""
    monkeypatch.setattr(fp, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(fp, "_hash_threads", lambda: 2)  # even on a one-CPU runner
    readers: set[int] = set()
    real = fp.file_digest
    calls = iter(range(1_000_000))  # next() on a range iterator is atomic under the GIL
    both_started = threading.Barrier(2, timeout=10)

    def recording(path: str | Path) -> str:
        readers.add(threading.get_ident())
        if next(calls) < 2:  # the first two reads meet, so both threads surely take part
            with contextlib.suppress(threading.BrokenBarrierError):
                both_started.wait()
        return real(path)

    monkeypatch.setattr(fp, "file_digest", recording)
    return readers


def test_parallel_hashing_gives_the_pinned_fingerprint_on_two_threads(golden: Path, parallel: set[int]) -> None:
    assert fingerprint(golden) == GOLDEN_FINGERPRINT
    assert len(parallel) == 2  # the calling thread and one helper


def test_small_folders_are_hashed_on_the_calling_thread(golden: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readers: set[int] = set()
    real = fp.file_digest

    def recording(path: str | Path) -> str:
        readers.add(threading.get_ident())
        return real(path)

    monkeypatch.setattr(fp, "file_digest", recording)
    monkeypatch.setattr(fp, "_hash_threads", lambda: 2)
    assert sum(len(data) for data in GOLDEN_FILES.values()) < fp.PARALLEL_MIN_BYTES
    assert fingerprint(golden) == GOLDEN_FINGERPRINT
    assert readers == {threading.get_ident()}


def test_parallel_read_error_names_the_file(golden: Path, parallel: set[int], monkeypatch: pytest.MonkeyPatch) -> None:
    real = fp.file_digest
    bad = golden / "model-00002-of-00003.safetensors"

    def failing(path: str | Path) -> str:
        digest = real(path)  # meets the other thread first (see the parallel fixture)
        if Path(path) == bad:
            raise PermissionError(13, "Permission denied")
        return digest

    monkeypatch.setattr(fp, "file_digest", failing)
    with pytest.raises(CheckpointError, match="cannot read") as info:
        fingerprint(golden)
    assert info.value.path == bad


def test_warm_stat_cache_starts_no_threads(
    golden: Path, tmp_path: Path, parallel: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    for file in golden.rglob("*"):
        if file.is_file():
            age(file)
    with StatCache(tmp_path / "stat.db") as cache:
        assert fingerprint(golden, cache) == GOLDEN_FINGERPRINT
        parallel.clear()

        def no_threads(*args: object, **kwargs: object) -> None:
            raise AssertionError("a fully cached fingerprint started a thread")

        monkeypatch.setattr(threading, "Thread", no_threads)
        assert fingerprint(golden, cache) == GOLDEN_FINGERPRINT
    assert parallel == set()


def test_a_file_rewritten_while_read_is_read_again(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = ckpt / "model.safetensors"
    new = os.urandom(len(FILES["model.safetensors"]) + 1)
    real = fp.file_digest
    calls: list[str] = []

    def rewriting(path: str | Path) -> str:
        calls.append(Path(path).name)
        digest = real(path)
        if Path(path) == file and calls.count(file.name) == 1:
            file.write_bytes(new)  # lands after the read: the first digest is stale
        return digest

    monkeypatch.setattr(fp, "file_digest", rewriting)
    assert ("model.safetensors", len(new), xxhash.xxh3_128_hexdigest(new)) in fingerprint_files(ckpt)
    assert calls.count("model.safetensors") == 2


def test_missing_path_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found") as info:
        fingerprint(tmp_path / "nope")
    assert info.value.path == tmp_path / "nope"
    assert isinstance(info.value, FileNotFoundError)


def test_broken_symlink_raises_checkpoint_error(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "gone.bin").symlink_to(tmp_path / "missing-blob")
    with pytest.raises(CheckpointError, match="broken symlink"):
        fingerprint(ckpt)


def test_stat_cache_skips_reading_unchanged_files(ckpt: Path, tmp_path: Path, count_reads: list[str]) -> None:
    db = tmp_path / "state" / "stat.db"
    with StatCache(db) as cache:
        first = fingerprint(ckpt, cache)
    assert sorted(count_reads) == sorted(Path(name).name for name in FILES)
    count_reads.clear()
    with StatCache(db) as cache:  # a new process, in effect: the cache is on disk
        assert fingerprint(ckpt, cache) == first
    assert count_reads == []


def test_stat_cache_rereads_a_modified_file(ckpt: Path, tmp_path: Path, count_reads: list[str]) -> None:
    with StatCache(tmp_path / "stat.db") as cache:
        before = fingerprint(ckpt, cache)
        file = ckpt / "model.safetensors"
        file.write_bytes(os.urandom(len(FILES["model.safetensors"])))  # same size, new content
        age(file, AN_HOUR_AGO + 60)  # new mtime, still trustworthy
        count_reads.clear()
        assert fingerprint(ckpt, cache) != before
    assert count_reads == ["model.safetensors"]


def test_stat_cache_distrusts_files_modified_just_now(ckpt: Path, tmp_path: Path, count_reads: list[str]) -> None:
    # Racy git: a file written within the mtime granularity may change again unseen.
    os.utime(ckpt / "config.json")
    with StatCache(tmp_path / "stat.db") as cache:
        fingerprint(ckpt, cache)
        count_reads.clear()
        fingerprint(ckpt, cache)
    assert count_reads == ["config.json"]


def test_stat_cache_is_shared_between_connections(ckpt: Path, tmp_path: Path) -> None:
    file = ckpt / "config.json"
    st = file.stat()
    with StatCache(tmp_path / "stat.db") as writer, StatCache(tmp_path / "stat.db") as reader:
        writer.put(file, st, "d" * 32)
        assert reader.get(file, st) == "d" * 32
        assert reader.get(ckpt / "model.safetensors", st) is None


def test_default_stat_cache_lives_in_the_state_folder(tmp_path: Path) -> None:
    with default_stat_cache(tmp_path / "cache") as cache:
        assert cache.db_path == tmp_path / "cache" / "state" / "stat.db"
        assert cache.db_path.is_file()


def test_an_edit_that_restores_the_mtime_is_still_seen(tmp_path):
    """The stat record holds the change time, as git's index does: os.utime cannot set it back."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"a" * 64)
    old = os.stat(path)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns - 10**10))  # aged: trustworthy for the stat cache
    with fp.StatCache(tmp_path / "stat.db", racy_window_ns=10**9) as cache:
        first = cache.digest(path)
        before = os.stat(path)
        time.sleep(0.01)
        with open(path, "r+b") as file:  # one byte flipped in place, same size, the mtime put back
            file.write(b"b")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(path)
        assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
        assert cache.digest(path) == xxhash.xxh3_128_hexdigest(b"b" + b"a" * 63) != first
