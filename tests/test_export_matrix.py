"""Every (architecture, feature) of the support matrix, exported and validated end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest

from conftest import checkpoint
from hatch_onnx import fused, generation, graph_sets
from hatch_onnx.exporting import ExportRequest, export_checkpoint
from hatch_onnx.models import REGISTRY

import transformers

MAJOR = int(transformers.__version__.split(".")[0])
# Every pair this transformers line can export; the registry says why any other cannot.
PAIRS = [(m, f) for m, support in REGISTRY.items() for f in support.features if support.unavailable_reason(f, MAJOR) is None]
# Pairs whose model loads from a checkpoint of its own: DETR's segmentation model names its weights
# detr.model.*, so no object-detection checkpoint holds them (the Hub has *-panoptic checkpoints);
# Perceiver's image model has the text model's layer names with other shapes (vision-perceiver-*).
FIXTURE_FOR = {("detr", "image-segmentation"): "detr-panoptic", ("perceiver", "image-classification"): "perceiver-vision"}
UNAVAILABLE = [(m, f) for m, support in REGISTRY.items() for f in support.features if support.unavailable_reason(f, MAJOR) is not None]
# Each pair's graph interface (input and output names in order, dtypes, shapes with named dynamic
# axes), pinned: both transformers lines must export exactly this. Regenerate after a deliberate
# change with HATCH_ONNX_PIN_INTERFACES=1 (the test then writes the file instead of comparing).
INTERFACES = Path(__file__).parent / "data" / "graph_interfaces.json"


# Pairs whose default exporter is fused (hatch_onnx.fused) are also traced: both graphs must have the pinned interface.
TRACED_TOO = [(m, f) for m, f in PAIRS if f == fused.FEATURE and m in fused.FAMILIES]
CASES = [(m, f, None) for m, f in PAIRS] + [(m, f, "torchscript") for m, f in TRACED_TOO]


@pytest.mark.slow
@pytest.mark.parametrize("model_type, feature, exporter", CASES, ids=[f"{m}:{f}" + (f":{e}" if e else "") for m, f, e in CASES])
def test_export_and_validate(model_type, feature, exporter, tmp_path):
    request = ExportRequest(model=checkpoint(FIXTURE_FOR.get((model_type, feature), model_type)), feature=feature, allow_new_head=True,
                            exporter=exporter)
    report = export_checkpoint(request, tmp_path, log=lambda line: None)
    assert report["exporter"] == (exporter or ("fused" if (model_type, feature) in TRACED_TOO else "torchscript"))
    graph = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(graph)
    assert [o.name for o in graph.graph.output] == list(report["validation"]["outputs"])
    for figures in report["validation"]["outputs"].values():
        assert figures["max_abs_diff"] <= figures["atol"]
    # validation ran at shapes other than the export's: the batch axis really is dynamic
    first_input = report["validation"]["graph"]["inputs"][0]
    assert first_input["shape"][0] == "batch"
    assert report["validation"]["inputs"][first_input["name"]][0] == 3
    # an encoder-decoder with past also ships its graph set, validated graph by graph and by generation
    makes_set = graph_sets.applies(model_type, feature, "pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", *(graph_sets.GRAPHS if makes_set else ())])
    if makes_set or feature == "causal-lm-with-past":
        figures = report["validation"]["generation"]
        if feature == "default-with-past":  # hidden states: teacher-forced, no token chosen
            assert figures["tokens_equal"] is None and figures["mode"] == "teacher-forced" and "n/a" in figures["tokens_compared"]
            assert figures["steps"] == generation.NEW_TOKENS and figures["max_diff"] <= report["atol"]
        else:
            assert figures["tokens_equal"] and figures["steps"] == generation.NEW_TOKENS and figures["max_logits_diff"] <= report["atol"]
    if makes_set:
        members = report["validation"]["graph_set"]["graphs"]
        assert set(members) == set(graph_sets.GRAPHS)
        for graph, figures in members.items():  # each member's interface, pinned as the pair's own
            _check_interface(f"{model_type}:{feature}:{graph}", {"inputs": figures["inputs"], "outputs": figures["outputs"]})
    _check_interface(f"{model_type}:{feature}", report["validation"]["graph"])


def _check_interface(pair: str, interface: dict) -> None:
    """Compare with the pinned interface: the same on both transformers lines, exactly."""
    pinned = json.loads(INTERFACES.read_text()) if INTERFACES.exists() else {}
    if os.environ.get("HATCH_ONNX_PIN_INTERFACES") == "1":
        pinned[pair] = interface
        INTERFACES.parent.mkdir(exist_ok=True)
        lines = [f"  {json.dumps(name)}: {json.dumps(pinned[name], sort_keys=True)}" for name in sorted(pinned)]
        INTERFACES.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # a line per pair: readable diffs
        return
    assert pair in pinned, f"{pair}: no pinned interface in {INTERFACES.name} (HATCH_ONNX_PIN_INTERFACES=1 writes it)"
    assert interface == pinned[pair]


@pytest.mark.slow
@pytest.mark.parametrize("model_type, feature", UNAVAILABLE, ids=[f"{m}:{f}" for m, f in UNAVAILABLE])
def test_unavailable_pair_really_fails(model_type, feature, tmp_path):
    """A pair declared unavailable on this line does fail: the declaration is not stale."""
    request = ExportRequest(model=checkpoint(model_type), feature=feature, allow_new_head=True)
    with pytest.raises(Exception):
        export_checkpoint(request, tmp_path, log=lambda line: None)
    assert not (tmp_path / "model.onnx").exists()
