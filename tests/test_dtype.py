"""float16 exports: the model loaded in float16, the graph exported and validated in it."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
import yaml

from conftest import checkpoint
from hatch_onnx.exporting import ExportRequest, export_checkpoint

pytestmark = pytest.mark.slow


def _initializer_types(path) -> set[int]:
    return {tensor.data_type for tensor in onnx.load(str(path)).graph.initializer if tensor.dims and tensor.data_type in (1, 10)}


def _weight_bytes(path) -> int:
    return sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer if t.data_type in (1, 10))


@pytest.mark.parametrize("model_type, feature, float_input", [
    ("llama", "causal-lm-with-past", "past_key_values.0.key"),
    ("bert", "masked-lm", None),
    ("vit", "image-classification", "pixel_values"),
])
def test_float16_export_is_float16_and_validated(model_type, feature, float_input, tmp_path):
    report = export_checkpoint(ExportRequest(model=checkpoint(model_type), feature=feature, dtype="float16"), tmp_path / "16", log=lambda line: None)
    assert report["dtype"] == "float16"
    assert _initializer_types(tmp_path / "16" / "model.onnx") == {onnx.TensorProto.FLOAT16}
    graph = report["validation"]["graph"]
    assert {o["dtype"] for o in graph["outputs"]} == {"float16"}
    if float_input:
        assert next(i for i in graph["inputs"] if i["name"] == float_input)["dtype"] == "float16"
    for figures in report["validation"]["outputs"].values():
        assert figures["rtol"] > 0 and figures["atol"] >= 1e-3
    # the float32 export of the same model: weights of twice the bytes, validated without rtol
    full = export_checkpoint(ExportRequest(model=checkpoint(model_type), feature=feature), tmp_path / "32", log=lambda line: None)
    assert full["dtype"] == "float32" and "rtol" not in next(iter(full["validation"]["outputs"].values()))
    assert _weight_bytes(tmp_path / "16" / "model.onnx") * 2 == _weight_bytes(tmp_path / "32" / "model.onnx")


def test_a_wrong_float16_graph_fails_validation(tmp_path):
    import torch

    from hatch_onnx.errors import AtolError
    from hatch_onnx.onnx.convert import validate_model_outputs
    from hatch_onnx.validation import FP16_ATOL
    from hatch_onnx.onnx.features import FeaturesManager

    export_checkpoint(ExportRequest(model=checkpoint("llama"), feature="causal-lm", dtype="float16"), tmp_path, log=lambda line: None)
    model, _ = FeaturesManager.load_model("causal-lm", str(checkpoint("llama")), "pt", None, "float16")
    config = FeaturesManager.check_supported_model_or_raise(model, "causal-lm")[1](model.config)
    validate_model_outputs(config, None, model, tmp_path / "model.onnx", ["logits"], FP16_ATOL)  # as exported: agrees
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.05)  # a 5% change of one weight matrix
    with pytest.raises(AtolError, match="max |reference|"):
        validate_model_outputs(config, None, model, tmp_path / "model.onnx", ["logits"], FP16_ATOL)


def test_params_dtype_builds_a_float16_entry_beside_the_float32_one(tmp_path):
    def build(dtype: str | None):
        model = {"checkpoint": str(checkpoint("bert")), "features": ["masked-lm"], **({"dtype": dtype} if dtype else {})}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"onnx": {"models": {"bert": model}}}))
        result = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result, json.loads((tmp_path / "out" / "manifest.json").read_text())["models"]["bert"]["masked-lm"]

    _, full = build(None)
    result, half = build("float16")
    assert "exported" in result.stdout  # not served the float32 entry: dtype is part of the key
    assert (full["dtype"], half["dtype"]) == ("float32", "float16") and full["cache_key"] != half["cache_key"]
    assert {o["dtype"] for o in half["outputs"]} == {"float16"}
    again, _ = build("float16")
    assert "Nothing exported" in again.stdout


def test_cli_dtype_fp16(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hatch_onnx", "export", "--model", str(checkpoint("bert")), "--dtype", "fp16", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert _initializer_types(tmp_path / "model.onnx") == {onnx.TensorProto.FLOAT16}
    assert "max abs diff" in result.stdout  # validated


def test_a_large_float16_graph_is_validated_unoptimised(tmp_path, monkeypatch):
    """onnxruntime's CPU optimiser would give every float16 weight a float32 copy (2x an 8B model's 16 GB):
    a float16 graph with external data opens unoptimised, and still validates and generates."""
    import onnxruntime

    from hatch_onnx import config as config_module
    from hatch_onnx import validation

    monkeypatch.setattr(config_module, "EXTERNAL_DATA_THRESHOLD", 512)
    levels = []
    session_class = onnxruntime.InferenceSession

    def recording(path, options=None, **kwargs):
        levels.append((path.rsplit("/", 1)[-1], options.graph_optimization_level))
        return session_class(path, options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    for dtype in ("float16", "float32"):
        report = export_checkpoint(ExportRequest(model=checkpoint("llama"), feature="causal-lm-with-past", dtype=dtype), tmp_path / dtype,
                                   log=lambda line: None)
        assert (tmp_path / dtype / "model.onnx.data").is_file() and report["validation"]["generation"]["steps"] > 0
        assert validation._large_half(tmp_path / dtype / "model.onnx") is (dtype == "float16")
    unoptimised = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert [level == unoptimised for _, level in levels] == [True, False]  # one session for the step and the generation, per dtype
