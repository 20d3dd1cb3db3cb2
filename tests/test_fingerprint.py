from __future__ import annotations

import os
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


def test_single_file_is_listed_by_its_name(ckpt: Path) -> None:
    file = ckpt / "model.safetensors"
    data = FILES["model.safetensors"]
    assert fingerprint_files(file) == [("model.safetensors", len(data), xxhash.xxh3_128_hexdigest(data))]


def test_file_digest_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(10_000)
    (tmp_path / "blob").write_bytes(data)
    monkeypatch.setattr(fp, "CHUNK_SIZE", 7)  # many chunks, a short last one
    assert file_digest(tmp_path / "blob") == xxhash.xxh3_128_hexdigest(data)


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
