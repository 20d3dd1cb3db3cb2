"""Materialising results: model folders with their side files, the manifest, the DVC figures."""

from __future__ import annotations

import json
import os

import pytest

from conftest import checkpoint
from hatch_onnx.build import JobResult
from hatch_onnx.cache import CacheStore, cache_key
from hatch_onnx.package import MANIFEST, materialize, write_validation_figures
from hatch_onnx.plan import Job

REPORT = {
    "model_type": "bert", "framework": "pt", "exporter": "torchscript", "opset": 14, "new_head_weights": [],
    "validation": {
        "atol": 1e-4, "inputs": {"input_ids": [3, 11]},
        "graph": {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
                  "outputs": [{"name": "logits", "dtype": "float", "shape": ["batch", "sequence", 88]}]},
        "outputs": {"logits": {"shape": [3, 11, 88], "max_abs_diff": 2e-7, "atol": 1e-4}},
    },
}


def entry_for(store: CacheStore, job: Job, content: bytes) -> JobResult:
    inputs = {"feature": job.feature, "content": content.hex(), "versions": {"torch": "2.13.0", "transformers": "5.24.0"}}
    key = cache_key(inputs)
    with store.staging() as staging:
        (staging / "model.onnx").write_bytes(content)
        (staging / "report.json").write_text(json.dumps({**REPORT, "feature": job.feature}))
        entry = store.put(key, staging, inputs, {"total": 1.0})
    return JobResult(job, key, "exported", 1.0, entry)


@pytest.fixture
def results(tmp_path):
    store = CacheStore(tmp_path / "cache")
    job = Job("bert-tiny", "masked-lm", checkpoint("bert"), "bert", "pt", 14, None, "torchscript", False)
    other = Job("bert-tiny", "default", checkpoint("bert"), "bert", "pt", 14, None, "torchscript", False)
    return [entry_for(store, job, b"graph one"), entry_for(store, other, b"graph two")]


def test_materialize_writes_folders_side_files_and_manifest(tmp_path, results):
    out = tmp_path / "out"
    manifest = materialize(out, results, {checkpoint("bert"): "f" * 32}, package_version="1.2.3")
    assert (out / "bert-tiny" / "masked-lm" / "model.onnx").read_bytes() == b"graph one"
    assert (out / "bert-tiny" / "masked-lm" / "tokenizer.json").is_file()  # inference needs the preprocessor
    assert not (out / "bert-tiny" / "masked-lm" / "report.json").exists()
    entry = manifest["models"]["bert-tiny"]["masked-lm"]
    assert entry["files"]["model.onnx"] == {"path": "bert-tiny/masked-lm/model.onnx", "size": 9, "role": "graph", "layout": "optimum",
                                            "xxh3_128": results[0].entry.files["model.onnx"][1]}
    assert entry["files"]["config.json"]["role"] == "config" and entry["files"]["tokenizer.json"]["role"] == "preprocessor"
    assert entry["layouts"] == ["optimum"] and manifest["format"] == 3
    assert entry["toolchain"] == {"torch": "2.13.0", "transformers": "5.24.0"}  # the interpreter that ran the job
    assert entry["source"]["checkpoint_fingerprint"] == "f" * 32 and entry["cache_key"] == results[0].key
    assert json.loads((out / MANIFEST).read_text()) == manifest and manifest["version"] == "1.2.3"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_unchanged_model_folders_are_not_rewritten(tmp_path, results):
    out = tmp_path / "out"
    materialize(out, results, {checkpoint("bert"): "f" * 32})
    before = os.stat(out / "bert-tiny").st_ino
    materialize(out, results, {checkpoint("bert"): "f" * 32})
    assert os.stat(out / "bert-tiny").st_ino == before


def test_other_models_in_the_manifest_are_kept(tmp_path, results):
    out = tmp_path / "out"
    materialize(out, results[:1], {checkpoint("bert"): "f" * 32})
    renamed = [JobResult(Job(**{**r.job.__dict__, "name": "again"}), r.key, r.status, r.seconds, r.entry) for r in results[1:]]
    manifest = materialize(out, renamed, {checkpoint("bert"): "f" * 32})
    assert sorted(manifest["models"]) == ["again", "bert-tiny"]  # a --only build adds, never drops


def test_validation_figures_for_dvc(tmp_path, results):
    write_validation_figures(results, metrics=tmp_path / "m.json", plots=tmp_path / "p.json")
    assert json.loads((tmp_path / "m.json").read_text())["masked-lm"]["logits"] == {"max_abs_diff": 2e-7, "atol": 1e-4}
    assert {record["output"] for record in json.loads((tmp_path / "p.json").read_text())} == {"masked-lm/logits", "default/logits"}


def test_layouts_place_graphs_and_variants_for_each_consumer(tmp_path, results):
    """transformers.js's names under onnx/, Optimum's at the root; both in one folder; roles in the manifest."""
    import dataclasses

    from hatch_onnx.runtime import model_path

    store = CacheStore(tmp_path / "cache")
    both = [JobResult(dataclasses.replace(r.job, layouts=("optimum", "transformers.js")), r.key, r.status, r.seconds, r.entry)
            for r in results]
    variant_job = both[0].job
    inputs = {"variant": "int8", "content": "v"}
    with store.staging() as staging:
        (staging / "model.onnx").write_bytes(b"quantised")
        (staging / "report.json").write_text(json.dumps({"settings": {}, "source_size": 9, "validation": {"outputs": {}}}))
        entry = store.put(cache_key(inputs), staging, inputs, {"total": 1.0})
    variant = JobResult(variant_job, entry.key, "exported", 1.0, entry, variant="int8")
    out = tmp_path / "out"
    manifest = materialize(out, both, {checkpoint("bert"): "f" * 32}, variants=[variant])
    folder = out / "bert-tiny" / "masked-lm"
    assert (folder / "model.onnx").read_bytes() == (folder / "onnx" / "model.onnx").read_bytes() == b"graph one"
    assert (folder / "onnx" / "model_quantized.onnx").read_bytes() == (folder / "model.int8.onnx").read_bytes() == b"quantised"
    assert not (folder / "onnx" / "config.json").exists() and (folder / "config.json").is_file()  # config files at the root, once
    entry = manifest["models"]["bert-tiny"]["masked-lm"]
    assert entry["layouts"] == ["optimum", "transformers.js"]
    assert entry["files"]["onnx/model.onnx"] == {**entry["files"]["model.onnx"], "path": "bert-tiny/masked-lm/onnx/model.onnx",
                                                 "layout": "transformers.js"}
    assert entry["variants"]["int8"]["files"]["onnx/model_quantized.onnx"]["role"] == "variant"
    assert "genai_config.json" not in entry["files"]  # an encoder: nothing for onnxruntime-genai
    # the loader finds graphs by role, Optimum's layout first
    assert model_path("bert-tiny", "masked-lm", root=out) == folder / "model.onnx"
    assert model_path("bert-tiny", "masked-lm", root=out, variant="int8") == folder / "model.int8.onnx"


def test_a_transformers_js_folder_alone(tmp_path, results):
    import dataclasses

    from hatch_onnx.runtime import model_path

    only = [JobResult(dataclasses.replace(r.job, layouts=("transformers.js",)), r.key, r.status, r.seconds, r.entry) for r in results]
    out = tmp_path / "out"
    materialize(out, only, {checkpoint("bert"): "f" * 32})
    folder = out / "bert-tiny" / "masked-lm"
    assert not (folder / "model.onnx").exists() and (folder / "onnx" / "model.onnx").is_file()
    assert model_path("bert-tiny", "masked-lm", root=out) == folder / "onnx" / "model.onnx"
