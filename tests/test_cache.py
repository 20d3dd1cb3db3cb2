from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import xxhash

from hatch_onnx import cache as cache_mod
from hatch_onnx.cache import CacheEntry, CacheStore, cache_key, resolve_cache_root
from hatch_onnx.errors import BadInputError, CorruptCacheEntryError

ROOT = Path(__file__).resolve().parents[1]
INPUTS = {
    "checkpoint": "9f" * 16,
    "model_type": "bert",
    "feature": "default",
    "framework": "pt",
    "opset": 17,
    "exporter": {"name": "torchscript", "options": {}},
    "validation": {"atol": 1e-4},
    "versions": {"python": "3.11", "torch": "2.4.0"},
}


@pytest.fixture
def store(tmp_path: Path) -> CacheStore:
    return CacheStore(tmp_path / "cache")


def put(store: CacheStore, key: str, model: bytes = b"onnx-bytes", **extra: bytes) -> CacheEntry:
    with store.staging() as folder:
        (folder / "model.onnx").write_bytes(model)
        for name, data in extra.items():
            (folder / name.replace("_", ".")).write_bytes(data)
        return store.put(key, folder, {"n": key}, {"export": 1.5})


def key_of(n: int) -> str:
    return cache_key({"n": n})


def run(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env, text=True, stdout=subprocess.PIPE)


# --- cache_key, resolve_cache_root ---------------------------------------------------------


def test_cache_key_ignores_dict_order() -> None:
    shuffled = {k: INPUTS[k] for k in reversed(INPUTS)}
    shuffled["exporter"] = {"options": {}, "name": "torchscript"}
    assert cache_key(shuffled) == cache_key(INPUTS)
    assert len(cache_key(INPUTS)) == 32


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("checkpoint", "8f" * 16),
        ("feature", "sequence-classification"),
        ("opset", 18),
        ("exporter", {"name": "dynamo", "options": {}}),
        ("validation", {"atol": 1e-3}),
        ("versions", {"python": "3.11", "torch": "2.5.0"}),
    ],
)
def test_cache_key_changes_with_any_input(name: str, value: object) -> None:
    assert cache_key({**INPUTS, name: value}) != cache_key(INPUTS)


def test_cache_key_includes_the_schema_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache_key(INPUTS)
    monkeypatch.setattr(cache_mod, "SCHEMA_VERSION", cache_mod.SCHEMA_VERSION + 1)
    assert cache_key(INPUTS) != before


def test_resolve_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HATCH_ONNX_CACHE", raising=False)
    assert resolve_cache_root(None, tmp_path) == tmp_path / ".hatch-onnx-cache"
    assert resolve_cache_root("build/cache", tmp_path) == tmp_path / "build" / "cache"
    assert resolve_cache_root(tmp_path / "abs", Path("/elsewhere")) == tmp_path / "abs"
    monkeypatch.setenv("HATCH_ONNX_CACHE", str(tmp_path / "env"))
    assert resolve_cache_root("build/cache", tmp_path) == tmp_path / "env"


# --- put, lookup ---------------------------------------------------------------------------


def test_put_then_lookup_roundtrip(store: CacheStore) -> None:
    key = key_of(1)
    assert store.lookup(key) is None
    put_entry = put(store, key, b"graph", model_onnx_data=b"weights", report_json=b"{}")
    entry = store.lookup(key)
    assert entry is not None
    assert entry.path == store.root / "v1" / key[:2] / key == put_entry.path
    assert entry.model_path.read_bytes() == b"graph"
    assert dict(entry.files) == {
        "model.onnx": (5, xxhash.xxh3_128_hexdigest(b"graph")),
        "model.onnx.data": (7, xxhash.xxh3_128_hexdigest(b"weights")),
        "report.json": (2, xxhash.xxh3_128_hexdigest(b"{}")),
    }
    assert (dict(entry.inputs), dict(entry.timings)) == ({"n": key}, {"export": 1.5})
    assert entry.created == put_entry.created
    record = json.loads((entry.path / "entry.json").read_text())
    assert record["files"]["model.onnx"] == {"size": 5, "xxh3_128": xxhash.xxh3_128_hexdigest(b"graph")}
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o444 for f in entry.path.iterdir())
    assert list((store.root / "tmp").iterdir()) == []  # the staging folder became the entry


def test_staging_is_removed_on_error_or_when_not_put(store: CacheStore) -> None:
    with pytest.raises(RuntimeError), store.staging() as folder:
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("export failed")
    with store.staging() as other:
        pass
    assert not folder.exists() and not other.exists()


def test_put_refuses_a_folder_outside_tmp(store: CacheStore, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match="staging"):
        store.put(key_of(1), tmp_path / "out", {}, {})


def test_keys_cannot_escape_the_store(store: CacheStore) -> None:
    with pytest.raises(BadInputError):
        store.entry_dir("../../etc")


def test_losing_put_returns_the_winners_entry(store: CacheStore) -> None:
    key = key_of(1)
    winner = put(store, key, b"first")
    loser = put(store, key, b"second")
    assert loser.path == winner.path
    assert loser.model_path.read_bytes() == b"first"
    assert list((store.root / "tmp").iterdir()) == []


def test_crashed_build_is_never_visible_and_gc_cleans_it(store: CacheStore) -> None:
    key = key_of(1)
    crash = run(
        """
        import os, sys
        from hatch_onnx.cache import CacheStore
        with CacheStore(sys.argv[1]).staging() as folder:
            (folder / "model.onnx").write_bytes(b"half an export")
            os._exit(9)  # killed mid-build: no cleanup runs
        """,
        str(store.root),
    )
    assert crash.wait(timeout=30) == 9
    (leftover,) = (store.root / "tmp").iterdir()
    assert store.lookup(key) is None and store.ls() == []
    store.gc()
    assert leftover.exists()  # fresh: might be a live build on another machine
    an_hour_ago = time.time() - 2 * 3600
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    assert store.gc() == []
    assert list((store.root / "tmp").iterdir()) == []


def test_gc_keeps_old_staging_of_a_live_process(store: CacheStore) -> None:
    with store.staging() as folder:
        os.utime(folder, (0, 0))
        store.gc()
        assert folder.exists()


# --- corruption ----------------------------------------------------------------------------


def _truncate_model(entry: CacheEntry) -> None:
    entry.model_path.chmod(0o644)
    entry.model_path.write_bytes(b"onnx")


@pytest.mark.parametrize(
    "damage",
    [
        _truncate_model,
        lambda entry: entry.model_path.unlink(),
        lambda entry: (entry.path / "entry.json").unlink(),
        lambda entry: os.chmod(entry.path / "entry.json", 0o644) or (entry.path / "entry.json").write_text("{not json"),
        lambda entry: os.chmod(entry.path / "entry.json", 0o644) or (entry.path / "entry.json").write_text('{"key": 1}'),
    ],
    ids=["truncated", "model-missing", "entry-json-missing", "entry-json-garbage", "entry-json-incomplete"],
)
def test_bad_entry_is_removed_by_lookup(store: CacheStore, damage) -> None:
    entry = put(store, key_of(1))
    damage(entry)
    assert store.lookup(entry.key) is None
    assert not entry.path.exists()
    assert put(store, entry.key).model_path.exists()  # and can be rebuilt


def test_require_raises_for_a_bad_or_missing_entry(store: CacheStore) -> None:
    entry = put(store, key_of(1))
    assert store.require(entry.key).key == entry.key
    _truncate_model(entry)
    with pytest.raises(CorruptCacheEntryError, match="model.onnx has 4 bytes") as info:
        store.require(entry.key)
    assert info.value.key == entry.key and not entry.path.exists()
    with pytest.raises(CorruptCacheEntryError, match="missing"):
        store.require(entry.key)


def test_verify_detects_same_size_content_change(store: CacheStore) -> None:
    good, bad = put(store, key_of(1), b"same-size"), put(store, key_of(2), b"same-size")
    assert store.verify() == []
    bad.model_path.chmod(0o644)
    bad.model_path.write_bytes(b"SAME-SIZE")
    assert store.verify(good.key) == []
    ((key, reason),) = store.verify()
    assert key == bad.key and "mismatch" in reason
    assert not bad.path.exists() and good.path.exists()


def test_a_same_size_corruption_is_never_served(store: CacheStore, tmp_path: Path) -> None:
    """A hit is served only when its digests match entry.json, even through a warm stat record."""
    from hatch_onnx.fingerprint import StatCache

    with StatCache(tmp_path / "stat.db", racy_window_ns=0) as stats:
        store.stats = stats
        entry = put(store, key_of(3), b"same-size")
        assert store.lookup(entry.key) is not None  # verified once: remembered by file state
        entry.model_path.chmod(0o644)
        entry.model_path.write_bytes(b"SAME-SIZE")  # new mtime: the record no longer vouches
        assert store.lookup(entry.key) is None and not entry.path.exists()


def test_a_read_only_cache_serves_its_hits(store: CacheStore, read_only) -> None:
    from hatch_onnx.fingerprint import default_stat_cache

    entry = put(store, key_of(4), b"graph")
    frozen = CacheStore(read_only(store.root))
    with default_stat_cache(frozen.root) as stats:  # its database cannot be written: digests are read
        frozen.stats = stats
        assert frozen.lookup(entry.key) is not None and not frozen.writable


# --- concurrency ---------------------------------------------------------------------------

BUILDER = """
import sys, time
from pathlib import Path
from hatch_onnx.cache import CacheStore

root, key, me = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(root.parent / f"ready-{me}").touch()
while len(list(root.parent.glob("ready-*"))) < 2:  # start together
    time.sleep(0.005)
store = CacheStore(root)
with store.lock(key, timeout=30):
    entry = store.lookup(key)
    if entry is None:
        with open(root.parent / "exports.log", "a") as log:
            log.write(me + "\\n")
        time.sleep(0.2)  # a slow export: the other builder must wait, not export too
        with store.staging() as folder:
            (folder / "model.onnx").write_text(f"exported by {me}")
            entry = store.put(key, folder, {}, {})
print(entry.model_path.read_text())
"""


def test_racing_builders_export_once_and_share_the_entry(store: CacheStore) -> None:
    key = key_of(1)
    builders = [run(BUILDER, str(store.root), key, me) for me in ("a", "b")]
    outputs = [builder.communicate(timeout=30)[0].strip() for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0]
    (exporter,) = (store.root.parent / "exports.log").read_text().split()
    assert outputs == [f"exported by {exporter}"] * 2


# --- listing, size, gc ---------------------------------------------------------------------


def test_ls_and_size(store: CacheStore) -> None:
    assert store.ls() == [] and store.size() == 0
    first, second = put(store, key_of(1), b"a" * 100), put(store, key_of(2), b"b" * 200)
    assert [entry.key for entry in store.ls()] == [first.key, second.key]
    entry_json = sum((e.path / "entry.json").stat().st_size for e in (first, second))
    assert store.size() == 300 + entry_json


def _last_used(entry: CacheEntry, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(entry.path, (when, when))


def test_gc_by_age_keeps_recently_hit_entries(store: CacheStore) -> None:
    old, hit, fresh = put(store, key_of(1)), put(store, key_of(2)), put(store, key_of(3))
    _last_used(old, 3 * 86400)
    _last_used(hit, 3 * 86400)
    assert store.lookup(hit.key) is not None  # a hit counts as a use
    assert store.gc(max_age_seconds=86400) == [old.key]
    assert [e.key for e in store.ls()] == [hit.key, fresh.key]


def test_gc_by_size_removes_least_recently_used_first(store: CacheStore) -> None:
    entries = [put(store, key_of(n), bytes(1000)) for n in range(4)]
    for n, entry in enumerate(entries):
        _last_used(entry, [40, 10, 30, 20][n])
    assert store.gc(max_size_bytes=2500) == [entries[0].key, entries[2].key]
    assert {e.key for e in store.ls()} == {entries[1].key, entries[3].key}
    assert store.gc(max_size_bytes=2500) == []


def test_gc_removes_bad_entries(store: CacheStore) -> None:
    entry = put(store, key_of(1))
    (entry.path / "entry.json").unlink()
    assert store.gc() == [entry.key]


# --- light core ----------------------------------------------------------------------------


def test_light_core_imports_no_ml_framework() -> None:
    check = run(
        """
        import sys
        import hatch_onnx.cache, hatch_onnx.fingerprint
        heavy = {"numpy", "torch", "transformers", "onnx", "onnxruntime", "tensorflow", "tf2onnx"}
        print(sorted(heavy & {name.split(".")[0] for name in sys.modules}))
        """
    )
    assert check.communicate(timeout=30)[0].strip() == "[]"
