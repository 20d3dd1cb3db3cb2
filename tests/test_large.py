"""A real-size export: a random checkpoint of Qwen2.5-0.5B's size (494M parameters, 1.98 GB).

Its weights (half of protobuf's 2 GiB or more) go to one ``model.onnx.data`` beside the graph,
and the graph validates. bench/large.py measures its wall time and peak memory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from hatch_onnx.exporting import ExportRequest, export_checkpoint

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def qwen25_05b(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("large") / "qwen2.5-0.5b-random"
    code = f"import sys; sys.path.insert(0, {str(FIXTURES)!r}); import generate; generate.write_qwen25_05b(generate.Path({str(target)!r}))"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return target


def test_half_a_billion_parameters_export_with_external_data_and_validate(qwen25_05b, tmp_path):
    report = export_checkpoint(ExportRequest(model=qwen25_05b, feature="causal-lm-with-past"), tmp_path, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"] == report["files"]
    graph_bytes, data_bytes = (tmp_path / "model.onnx").stat().st_size, (tmp_path / "model.onnx.data").stat().st_size
    weights = (qwen25_05b / "model.safetensors").stat().st_size
    assert graph_bytes < 4 * 2**20 and abs(data_bytes - weights) < 0.01 * weights  # the tied embedding is written once
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert {entry.value for t in graph.graph.initializer for entry in t.external_data if entry.key == "location"} == {"model.onnx.data"}
    assert [i.name for i in graph.graph.input][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert report["validation"]["graph"]["inputs"][3]["shape"] == ["batch", 2, "past_sequence", 64]  # 2 key/value heads
    assert all(o["max_abs_diff"] <= o["atol"] for o in report["validation"]["outputs"].values())
