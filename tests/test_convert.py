"""export() and validate_model_outputs(): determinism, external data, dynamo, strict validation."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from conftest import checkpoint
from hatch_onnx import FeaturesManager, export, validate_model_outputs
from hatch_onnx.errors import AtolError, OutputMismatchError, ShapeError

pytestmark = pytest.mark.slow


def load(model_type: str, feature: str):
    model = FeaturesManager.get_model_from_feature(feature, str(checkpoint(model_type)))
    _, make_config = FeaturesManager.check_supported_model_or_raise(model, feature)
    return model, make_config(model.config)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_byte_reproducible_across_processes_and_directories(tmp_path):
    digests = []
    for name in ("first", "second"):
        workdir = tmp_path / name
        workdir.mkdir()
        result = subprocess.run(
            [sys.executable, "-m", "hatch_onnx", "export", "--model", str(checkpoint("gpt2")),
             "--feature", "causal-lm-with-past", "out"],
            cwd=workdir, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        digests.append(sha256(workdir / "out" / "model.onnx"))
        assert str(workdir).encode() not in (workdir / "out" / "model.onnx").read_bytes()
    assert digests[0] == digests[1]


@pytest.mark.parametrize("model_type, feature", [("llama", "causal-lm-with-past"), ("t5", "seq2seq-lm-with-past"), ("deberta-v2", "question-answering"), ("detr", "object-detection")])
def test_shape_inference_without_weight_values_writes_the_same_bytes(model_type, feature, tmp_path, monkeypatch):
    """The exporter's shape inference, given only small constants, infers the same graph (and saves memory)."""
    from hatch_onnx.frameworks import pytorch

    model, config = load(model_type, feature)
    export(None, model, config, 14, tmp_path / "lean.onnx")
    calls = []
    real = pytorch._shape_inference_without_weight_values
    monkeypatch.setattr(pytorch, "_shape_inference_without_weight_values", lambda original: calls.append(1) or original)
    export(None, model, config, 14, tmp_path / "full.onnx")
    monkeypatch.setattr(pytorch, "_shape_inference_without_weight_values", real)
    assert calls and sha256(tmp_path / "lean.onnx") == sha256(tmp_path / "full.onnx")


def test_external_data_when_over_the_limit(tmp_path, monkeypatch):
    from hatch_onnx import config as config_module

    monkeypatch.setattr(config_module, "EXTERNAL_DATA_THRESHOLD", 512)
    model, config = load("bert", "masked-lm")
    target = tmp_path / "model.onnx"
    _, outputs = export(None, model, config, 14, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    graph = onnx.load(str(target), load_external_data=False)
    locations = {entry.value for init in graph.graph.initializer for entry in init.external_data if entry.key == "location"}
    assert locations == {"model.onnx.data"}
    assert target.stat().st_size < (tmp_path / "model.onnx.data").stat().st_size
    report = validate_model_outputs(config, None, model, target, outputs, config.atol_for_validation)
    assert report["outputs"]["logits"]["max_abs_diff"] <= config.atol_for_validation


def test_dynamo_exporter_is_selectable(tmp_path):
    model, config = load("bert", "sequence-classification")
    target = tmp_path / "model.onnx"
    _, outputs = export(None, model, config, 18, target, exporter="dynamo")
    graph = onnx.load(str(target))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert str(tmp_path).encode() not in target.read_bytes()
    validate_model_outputs(config, None, model, target, outputs, config.atol_for_validation)


def test_validation_rejects_a_patched_op(tmp_path):
    """A PatchingSpec that breaks one layer during export: validation must catch the difference."""
    import torch

    from hatch_onnx.onnx.config import PatchingSpec

    model, config = load("bert", "default")
    layer = model.bert.encoder.layer[0].output if hasattr(model, "bert") else model.encoder.layer[0].output
    broken = PatchingSpec(layer, "forward", lambda hidden, residual: torch.zeros_like(residual))
    bad_config = type(config)(model.config, task="default", patching_specs=[broken])
    target = tmp_path / "model.onnx"
    _, outputs = export(None, model, bad_config, 14, target)
    with pytest.raises(AtolError, match="last_hidden_state") as info:
        validate_model_outputs(config, None, model, target, outputs, 1e-4)
    assert info.value.output == "last_hidden_state" and info.value.value > 1e-4


def test_validation_checks_names_and_shapes(tmp_path):
    model, config = load("gpt2", "causal-lm")
    target = tmp_path / "model.onnx"
    _, outputs = export(None, model, config, 14, target)
    with pytest.raises(OutputMismatchError):
        validate_model_outputs(config, None, model, target, ["not_logits"], 1e-4)
    # freeze the sequence axis in the graph: validation runs at another length and must fail
    graph = onnx.load(str(target))
    for value in list(graph.graph.input) + list(graph.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 1 and dims[1].dim_param:
            dims[1].dim_value = 8
    onnx.save(graph, str(target))
    with pytest.raises(ShapeError, match=r"'input_ids': \[3, 11\]"):
        validate_model_outputs(config, None, model, target, outputs, 1e-4)
