"""Variants: made from the export, validated against the model, cached on their own, shipped and loadable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import checkpoint
from hatch_onnx.variants import LOSSY, settings

pytestmark = pytest.mark.slow


def project(tmp_path: Path, **model) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"onnx": {"variants": ["o2", "int8"], "models": {
        "bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"], **model}}}}))
    return path


def build(params: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), *args], capture_output=True, text=True)


def statuses(result: subprocess.CompletedProcess) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:] if line.split() and ":" in line.split()[0]}


def test_every_variant_is_made_validated_and_shipped(tmp_path):
    params = project(tmp_path, variants=["o1", "o2", "o3", "int8", "fp16"])
    out = tmp_path / "out"
    result = build(params, "--out", str(out), "--metrics", str(tmp_path / "metrics.json"))
    assert result.returncode == 0, result.stderr
    assert statuses(result) == {"bert:default": "exported", **{f"bert:default.{v}": "exported" for v in ("o1", "o2", "o3", "int8", "fp16")}}
    entry = json.loads((out / "manifest.json").read_text())["models"]["bert"]["default"]
    assert sorted(entry["variants"]) == ["fp16", "int8", "o1", "o2", "o3"]
    for variant, data in entry["variants"].items():
        (file,) = data["files"].values()
        assert file["path"] == f"bert/default/model.{variant}.onnx" and (out / file["path"]).stat().st_size == file["size"]
        for figures in data["validation"].values():
            if variant in LOSSY:
                assert figures["cosine"] >= figures["min_cosine"] == LOSSY[variant] and figures["max_abs_diff"] > 0
            else:
                assert figures["max_abs_diff"] <= figures["atol"]
    assert entry["variants"]["o2"]["settings"]["fusions"] == "bert"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["default.int8"]["last_hidden_state"]["cosine"] >= 0.98  # DVC metrics carry the variants

    # The loader opens a variant; an independent check: the o2 graph against PyTorch.
    import numpy as np
    import onnxruntime
    import torch
    import transformers

    from hatch_onnx.runtime import load, model_path

    path, session = load("bert", "default", root=out, variant="o2")
    assert path.name == "model.o2.onnx" and isinstance(session, onnxruntime.InferenceSession)
    with pytest.raises(KeyError, match="no variant 'o9'"):
        model_path("bert", "default", root=out, variant="o9")
    ids = np.random.default_rng(7).integers(5, 80, (2, 9))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    model = transformers.AutoModel.from_pretrained(checkpoint("bert"), local_files_only=True, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = model(**{k: torch.as_tensor(v) for k, v in feed.items()}).last_hidden_state.numpy()
    (got,) = session.run(["last_hidden_state"], feed)
    assert np.abs(got - expected).max() < 1e-3

    again = build(params, "--out", str(out))
    assert again.returncode == 0 and "Nothing exported" in again.stdout
    assert set(statuses(again).values()) == {"hit"}


def test_changing_only_a_variant_redoes_only_that_variant(tmp_path):
    assert build(project(tmp_path)).returncode == 0
    changed = build(project(tmp_path, min_cosine={"int8": 0.95}))
    assert changed.returncode == 0, changed.stderr
    assert statuses(changed) == {"bert:default": "hit", "bert:default.o2": "hit", "bert:default.int8": "exported"}


def test_a_variant_that_fails_fails_the_build_with_its_figures(tmp_path):
    result = build(project(tmp_path, min_cosine={"int8": 0.99999999}), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "bert:default.int8" in result.stderr and "cosine" in result.stderr and "below 1" in result.stderr
    assert "max abs diff" in result.stderr and not (tmp_path / "out").exists()
    # the export and the other variant are cached all the same
    assert statuses(build(project(tmp_path), "--out", str(tmp_path / "out")))["bert:default.o2"] == "hit"


def test_variants_of_a_decoder_with_padding(tmp_path):
    """A decoder's validation pads a row on the left: its padded positions, which attend to nothing
    and come out of float16 kernels differently, are left out as in the export's validation."""
    path = tmp_path / "params.yaml"
    # int8 of this tiny random llama reaches a cosine of 0.971 on onnxruntime 1.32 (already at main
    # 6c4e3e6): its floor is set here, as a user would for such a model; padding is what is tested.
    path.write_text(yaml.safe_dump({"onnx": {"variants": ["o2", "int8", "fp16"], "min_cosine": {"int8": 0.95}, "models": {
        "llama": {"checkpoint": str(checkpoint("llama")), "features": ["causal-lm"]}}}}))
    result = build(path, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert statuses(result) == {"llama:causal-lm": "exported", **{f"llama:causal-lm.{v}": "exported" for v in ("o2", "int8", "fp16")}}


def test_settings_enter_the_key():
    assert settings("int8", "bert", {}, False, None) == {"min_cosine": 0.98}
    assert settings("int8", "bert", {"int8": 0.9}, False, None) == {"min_cosine": 0.9}
    assert settings("fp16", "gpt2", {}, True, None) == {"fusions": "gpt2", "min_cosine": 0.99, "fp16_io": True}
    assert settings("o2", "roberta", {}, False, 1e-4) == {"fusions": "bert", "atol": 1e-4}
    with pytest.raises(ValueError):
        settings("o4", "bert", {}, False, None)


@pytest.mark.parametrize("variant", ["o2", "int8", "fp16"])
def test_a_variant_of_an_export_with_external_data_has_its_own(tmp_path, variant):
    """A real-size export has external data (protobuf writes no graph of 2 GiB): its variants do
    too, in a data file named for the variant, which the graph refers to and ships beside it."""
    import onnx
    import onnxruntime

    from hatch_onnx.layouts import placed
    from hatch_onnx.variants import make

    small = tmp_path / "small"
    exported = build(project(tmp_path, variants=[]), "--out", str(small))
    assert exported.returncode == 0, exported.stderr
    source_dir = tmp_path / "entry"
    source_dir.mkdir()
    graph = onnx.load(str(small / "bert/default/model.onnx"))
    onnx.save_model(graph, str(source_dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    target_dir = tmp_path / "variant"
    target_dir.mkdir()
    make(variant, source_dir / "model.onnx", target_dir / "model.onnx", settings(variant, "bert", {}, False, None))
    data = f"model.{variant}.onnx.data"
    assert {p.name for p in target_dir.iterdir()} == {"model.onnx", data}
    made = onnx.load(str(target_dir / "model.onnx"), load_external_data=False)
    locations = {e.value for init in made.graph.initializer for e in init.external_data if e.key == "location"}
    assert locations == {data}
    # shipped beside its graph under its own name in both layouts, and loadable from there
    assert placed("optimum", data, variant) == data and placed("transformers.js", data, variant) == f"onnx/{data}"
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (target_dir / "model.onnx").rename(shipped / f"model.{variant}.onnx")
    (target_dir / data).rename(shipped / data)
    onnxruntime.InferenceSession(str(shipped / f"model.{variant}.onnx"), providers=["CPUExecutionProvider"])


def test_a_tied_embedding_is_stored_once_in_every_variant(tmp_path):
    """gpt2 reads its embedding twice (the LM head is tied): the export stores it once, and so does
    each variant, where onnxruntime's offline folding would have written the head's transposed copy."""
    import onnx

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"onnx": {"variants": ["o1", "o2", "fp16"], "models": {
        "gpt2": {"checkpoint": str(checkpoint("gpt2")), "features": ["causal-lm"]}}}}))
    out = tmp_path / "out"
    result = build(path, "--out", str(out))
    assert result.returncode == 0, result.stderr
    vocab = json.loads((checkpoint("gpt2") / "config.json").read_text())["vocab_size"]
    for name in ("model.onnx", "model.o1.onnx", "model.o2.onnx", "model.fp16.onnx"):
        graph = onnx.load(str(out / "gpt2/causal-lm" / name))
        tables = [t.name for t in graph.graph.initializer if vocab in t.dims and len(t.dims) == 2]
        assert len(tables) == 1, (name, tables)
