"""exporter fused (hatch_onnx.fused): a rotary decoder's graph written with fused ops, behind the pinned interface.

Each family's graph is validated against PyTorch like every export: the one-step draw (three
rows, a sequence over a past: what onnxruntime-genai's graph cannot take) and 16 greedy tokens
at batch 2, left-padded. The faults show that the checks see what each family adds: Mistral's
sliding window (the draw is 18 positions, its fixture's window 6) and Qwen3's per-head norms.
The consumers (Optimum, transformers.js, onnxruntime-genai) run these graphs in test_consumers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, checkpoint, cli_in_fresh_process
from hatch_onnx import fused
from hatch_onnx.errors import BadInputError, ParamsError, ValidationError
from hatch_onnx.exporting import ExportRequest, check_request, export_checkpoint

FEATURE = "causal-lm-with-past"
# What a fused graph is made of: nothing traced, no shape arithmetic per layer.
OPS = {("", "Gather"), ("", "Shape"), ("", "Squeeze"), ("", "Unsqueeze"), ("", "Range"), ("", "Sub"), ("", "LessOrEqual"),
       ("", "Less"), ("", "And"), ("", "Cast"), ("", "Where"),
       ("com.microsoft", "SkipSimplifiedLayerNormalization"), ("", "Gemm"), ("", "Split"), ("", "Reshape"),
       ("", "RMSNormalization"), ("", "RotaryEmbedding"), ("", "Attention"), ("", "Sigmoid"), ("", "Mul"), ("", "Concat")}


def _export(model: "str | Path", out: Path, **request) -> dict:
    return export_checkpoint(ExportRequest(model=str(model), feature=FEATURE, exporter="fused", **request), out, log=lambda line: None)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(fused.FAMILIES))
def test_each_family_is_written_fused_validated_and_generation_checked(tmp_path, model_type):
    import onnx

    report = _export(checkpoint(model_type), tmp_path / "out")
    assert report["exporter"] == "fused" and report["opset"] == fused.OPSET
    validation = report["validation"]
    assert all(o["max_abs_diff"] <= report["atol"] for o in validation["outputs"].values())
    assert validation["inputs"]["input_ids"] == [3, 11] and validation["inputs"]["past_key_values.0.key"][2] == 7  # rows over a past
    figures = validation["generation"]
    assert figures["tokens_equal"] and figures["batch"] == 2 and figures["prompt_lengths"][0] != figures["prompt_lengths"][1]
    assert figures["distinct_tokens"] > 1 and figures["max_logits_diff"] <= report["atol"]
    # the pinned interface: the default exporter's names, order, types and axis names
    pinned = json.loads((ROOT / "tests" / "data" / "graph_interfaces.json").read_text())[f"{model_type}:{FEATURE}"]
    assert validation["graph"]["inputs"] == pinned["inputs"] and validation["graph"]["outputs"] == pinned["outputs"]
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"))
    onnx.checker.check_model(graph)  # standard ONNX where it says so: onnxruntime's ops in their own domain only
    ops = {(node.domain, node.op_type) for node in graph.graph.node}
    assert ops <= OPS and ("", "Attention") in ops and ("com.microsoft", "SkipSimplifiedLayerNormalization") in ops
    layers = json.loads((checkpoint(model_type) / "config.json").read_text())["num_hidden_layers"]
    # 18 a layer (biases inside the Gemms; 6 more for per-head norms); the embedding, the bias (3 more for a window),
    # the cache shape and the head: 23
    per_layer = 18 + (6 if fused.FAMILIES[model_type].qk_norm else 0)
    once = 23 + (3 if fused.FAMILIES[model_type].sliding_window else 0)
    assert len(graph.graph.node) == once + per_layer * layers, len(graph.graph.node)  # the traced graph: ~270 a layer
    # every projection a Gemm reading the weight as the checkpoint stores it, (out, in): nothing to transpose, on disk or in a session
    assert all([(a.name, a.i) for a in n.attribute] == [("transB", 1)] for n in graph.graph.node if n.op_type == "Gemm")
    assert not (tmp_path / "out" / "model.onnx.data").exists()  # tiny: inline


@pytest.mark.slow
@pytest.mark.parametrize("model_type, without, expected", [
    ("mistral", {"sliding_window": False}, "output 'logits': max abs diff .* exceeds atol"),
    ("qwen3", {"qk_norm": False}, "output 'logits': max abs diff .* exceeds atol"),
])
def test_a_family_feature_left_out_fails_validation(tmp_path, monkeypatch, model_type, without, expected):
    family = fused.FAMILIES[model_type]
    monkeypatch.setitem(fused.FAMILIES, model_type, fused.Family(**{**family.__dict__, **without}))
    with pytest.raises(ValidationError, match=expected):
        _export(checkpoint(model_type), tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.slow
def test_external_data_is_aligned_with_constants_inline_and_a_tied_table_stored_once(tmp_path, monkeypatch):
    import onnx

    from hatch_onnx import config as config_module

    monkeypatch.setattr(config_module, "EXTERNAL_DATA_THRESHOLD", 512)
    report = _export(checkpoint("qwen2"), tmp_path / "out")
    assert report["validation"]["generation"]["tokens_equal"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model.onnx.data"]
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline = [t for t in graph.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in external]
    assert external and all(offset % fused.ALIGNMENT == 0 for offset in offsets)
    assert all(len(t.raw_data) < fused.INLINE_BYTES for t in inline) and "const.q_split" in {t.name for t in inline}
    config = json.loads((checkpoint("qwen2") / "config.json").read_text())
    assert config["tie_word_embeddings"]
    tables = [t.name for t in graph.graph.initializer if sorted(t.dims) == sorted([config["vocab_size"], config["hidden_size"]])]
    assert tables == ["model.embed_tokens.weight"]
    # the head reads the table as it is (a Gemm with transB): nothing for a session to fold into a second table
    (head,) = [n for n in graph.graph.node if n.op_type == "Gemm" and n.input[1] == "model.embed_tokens.weight"]
    assert [(a.name, a.i) for a in head.attribute] == [("transB", 1)] and "Transpose" not in {n.op_type for n in graph.graph.node}
    # the weights keep the checkpoint's names and layout, but q, k and v, packed into one
    from safetensors import safe_open

    with safe_open(str(checkpoint("qwen2") / "model.safetensors"), "np") as stored:
        names = set(stored.keys())
        down = stored.get_tensor("model.layers.0.mlp.down_proj.weight")
    packed = {f"model.layers.{i}.self_attn.qkv_proj.weight" for i in range(config["num_hidden_layers"])} | {"rotary.cos", "rotary.sin"}
    assert packed <= {t.name for t in external} - names <= packed | {name.replace("weight", "bias") for name in packed}
    (placed,) = [t for t in external if t.name == "model.layers.0.mlp.down_proj.weight"]
    place = {entry.key: int(entry.value) for entry in placed.external_data if entry.key != "location"}
    data = (tmp_path / "out" / "model.onnx.data").read_bytes()
    assert data[place["offset"]:place["offset"] + place["length"]] == down.tobytes()


def _accepts_direct_io(folder: Path) -> bool:
    import os

    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        return True
    except (AttributeError, OSError):
        return False


@pytest.mark.parametrize("direct", [True, False], ids=["O_DIRECT", "page cache"])
def test_weights_are_written_where_their_tensors_say_through_either_route(tmp_path, monkeypatch, direct):
    """Matrices that cross the writer's buffers land at the aligned offsets their tensors name; the arrays are kept, not copied."""
    import os

    import numpy as np

    if not direct:
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    monkeypatch.setattr(fused._DataFile, "CHUNK", 3 * fused._DataFile.BLOCK)  # small buffers: most matrices span two or more
    weights = fused._Initializers(tmp_path / "model.onnx.data")
    assert weights._file.direct == (direct and _accepts_direct_io(tmp_path))
    arrays = [np.full((40 + 97 * k, 32), k, np.float32) for k in range(6)]  # sizes that are no multiple of a block
    for k, array in enumerate(arrays):
        weights.add(f"w{k}", array)
    weights.add("small", np.ones(3, np.float32))  # inline: below INLINE_BYTES
    weights.close()
    data = (tmp_path / "model.onnx.data").read_bytes()
    external = [t for t in weights.tensors if t.external_data]
    assert [t.name for t in external] == [f"w{k}" for k in range(6)] and set(weights.values) == {f"w{k}" for k in range(6)}
    for tensor, array in zip(external, arrays):
        place = {entry.key: entry.value for entry in tensor.external_data}
        start, length = int(place["offset"]), int(place["length"])
        assert start % fused.ALIGNMENT == 0 and data[start:start + length] == array.tobytes()
        assert weights.values[tensor.name] is array  # what a validation session reads in place: the caller's array
    assert len(data) == start + length  # the file ends where the last tensor does (O_DIRECT wrote whole blocks)


def test_direct_writes_a_file_system_refuses_go_through_the_page_cache(tmp_path, monkeypatch):
    """Some file systems open a file for O_DIRECT and then refuse its writes (EINVAL): the rest is written buffered."""
    import errno
    import fcntl
    import os

    import numpy as np

    write, refused = os.write, []

    def refusing(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return write(fd, data)

    monkeypatch.setattr(os, "write", refusing)
    monkeypatch.setattr(fused._DataFile, "CHUNK", 2 * fused._DataFile.BLOCK)
    weights = fused._Initializers(tmp_path / "model.onnx.data")
    arrays = [np.full((50 + 31 * k, 32), k, np.float32) for k in range(4)]
    for k, array in enumerate(arrays):
        weights.add(f"w{k}", array)
    weights.close()
    assert bool(refused) == _accepts_direct_io(tmp_path) and not weights._file.direct
    data = (tmp_path / "model.onnx.data").read_bytes()
    for tensor, array in zip(weights.tensors, arrays):
        place = {entry.key: entry.value for entry in tensor.external_data}
        assert data[int(place["offset"]):int(place["offset"]) + int(place["length"])] == array.tobytes()


def test_a_failed_write_or_a_misplaced_tensor_fails_the_graph(tmp_path, monkeypatch):
    import numpy as np

    array = np.arange(5000, dtype=np.float32)
    original = fused._DataFile._write

    def disk_full(self, index, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fused._DataFile, "_write", disk_full)
    weights = fused._Initializers(tmp_path / "full.onnx.data")
    weights.add("w", array)
    with pytest.raises(OSError, match="No space left"):
        weights.close()

    def shifted(self, index, length):  # a writer that loses the first byte of its first buffer
        if not getattr(self, "shifted", False):
            self.shifted = True
            self._buffers[index][0:length - 1] = self._buffers[index][1:length]
        original(self, index, length)

    monkeypatch.setattr(fused._DataFile, "_write", shifted)
    weights = fused._Initializers(tmp_path / "shifted.onnx.data")
    weights.add("w", array)
    with pytest.raises(OSError, match="w is not where the graph places it"):
        weights.close()


@pytest.mark.slow
def test_a_float16_export_validates(tmp_path):
    report = _export(checkpoint("llama"), tmp_path / "out", dtype="float16")
    assert report["dtype"] == "float16" and report["validation"]["generation"]["tokens_equal"]
    assert report["validation"]["graph"]["outputs"][0]["dtype"] == "float16"


@pytest.mark.slow
def test_a_build_caches_the_fused_graph_and_its_quantised_variants_quantise_every_projection(tmp_path, e2e_env):
    import onnx

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"onnx": {"variants": ["int4", "int8"], "min_cosine": {"int8": 0.9}, "layout": ["optimum", "transformers.js"], "models": {
        "qwen2": {"checkpoint": str(checkpoint("qwen2")), "features": [FEATURE], "exporter": "fused"}}}}))
    out = tmp_path / "out"
    first = _build(params, out, e2e_env)
    assert first.returncode == 0, first.stderr
    entry = json.loads((out / "manifest.json").read_text())["models"]["qwen2"][FEATURE]
    assert entry["source"]["exporter"] == "fused" and entry["validation"]["generation"]["tokens_equal"]
    variant = entry["variants"]["int4"]
    assert variant["weights"] and all(f["max_abs_diff"] <= f["atol"] for f in variant["weights"].values())
    folder = out / "qwen2" / FEATURE
    graph = onnx.load(str(folder / "model.int4.onnx"))
    ops = [node.op_type for node in graph.graph.node]
    layers = json.loads((checkpoint("qwen2") / "config.json").read_text())["num_hidden_layers"]
    # qkv, o, gate, up and down a layer, and the head; the tied table once, as the head's 4-bit weight
    assert "MatMul" not in ops and "Gemm" not in ops and ops.count("MatMulNBits") == 5 * layers + 1
    assert ops.count("GatherBlockQuantized") == 1
    assert ops.count("Attention") == layers
    assert (folder / "onnx" / "model_q4.onnx").read_bytes() == (folder / "model.int4.onnx").read_bytes()
    # int8: every projection and the head quantised (the projections' Gemms made MatMuls where their weights are)
    int8 = onnx.load(str(folder / "model.int8.onnx"))
    ops = [node.op_type for node in int8.graph.node]
    assert ops.count("MatMulInteger") == 5 * layers + 1 and "MatMul" not in ops and "Gemm" not in ops
    vocab = json.loads((checkpoint("qwen2") / "config.json").read_text())["vocab_size"]
    assert len([t for t in int8.graph.initializer if vocab in t.dims and len(t.dims) == 2]) == 1  # the tied table once: the head's int8 weight
    again = _build(params, out, e2e_env)
    assert again.returncode == 0, again.stderr
    assert "Nothing exported" in again.stdout


def _build(params: Path, out: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), "--out", str(out)],
                          capture_output=True, text=True, env=env)


# --- refusals: one line, exit 2, before any model loads ------------------------------------------


def _edited(tmp_path: Path, model_type: str, **changes) -> Path:
    """The fixture with ``changes`` to its config.json (its other files linked)."""
    folder = tmp_path / f"{model_type}-edited"
    folder.mkdir()
    for path in checkpoint(model_type).iterdir():
        if path.name != "config.json":
            (folder / path.name).symlink_to(path)
    config = json.loads((checkpoint(model_type) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize("model_type, feature, changes, message", [
    ("gpt2", FEATURE, {}, "model type 'gpt2' is not one it writes"),
    ("gemma2", FEATURE, {}, "model type 'gemma2' is not one it writes"),
    ("llama", "causal-lm", {}, "exports causal-lm-with-past only, not feature 'causal-lm'"),
    ("llama", FEATURE, {"hidden_act": "gelu"}, "hidden_act 'gelu': it writes SiLU MLPs only"),
    ("llama", FEATURE, {"mlp_bias": True}, "mlp_bias"),
    ("llama", FEATURE, {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope type 'dynamic' changes with the sequence"),
    ("qwen2", FEATURE, {"use_sliding_window": True}, "use_sliding_window: it writes layers that attend over the whole cache only"),
    ("qwen3", FEATURE, {"layer_types": ["full_attention", "sliding_attention"]}, "one attention span for all layers"),
])
def test_what_it_does_not_write_is_refused_before_loading(tmp_path, model_type, feature, changes, message):
    model = _edited(tmp_path, model_type, **changes) if changes else checkpoint(model_type)
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")) as caught:
        check_request(ExportRequest(model=str(model), feature=feature, exporter="fused"), tmp_path / "out")
    assert caught.value.exit_code == 2


def test_the_cli_refuses_in_one_line_and_imports_no_framework(tmp_path):
    run, imported = cli_in_fresh_process(["export", "--model", str(checkpoint("gpt2")), "--feature", FEATURE, "--exporter", "fused",
                                          str(tmp_path / "out")])
    assert run.returncode == 2, run.stderr
    assert imported == [] and len(run.stderr.strip().splitlines()) == 1
    assert "exporter fused: model type 'gpt2' is not one it writes" in run.stderr
    assert not (tmp_path / "out").exists()


def test_params_name_the_exporter_key_when_fused_cannot_write_a_model(tmp_path):
    from hatch_onnx.params import read_params
    from hatch_onnx.plan import resolve_plan

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"onnx": {"cache": str(tmp_path / "cache"), "models": {"phi3": {
        "checkpoint": str(checkpoint("phi3")), "features": [FEATURE], "exporter": "fused"}}}}))
    with pytest.raises(ParamsError, match=r"onnx\.models\.phi3\.exporter: .*model type 'phi3' is not one it writes") as caught:
        resolve_plan(read_params(params))
    assert caught.value.key == "onnx.models.phi3.exporter"


# --- the default: fused where it writes the model ------------------------------------------------


@pytest.mark.parametrize("model, features, opset, expected", [
    ("qwen2", [FEATURE, "default", "causal-lm"], None, {FEATURE: "fused", "default": "torchscript", "causal-lm": "torchscript"}),
    ("qwen2", [FEATURE], 14, {FEATURE: "fused"}),  # params' opset is a default: a writer's minimum wins (as an architecture's)
    ("qwen2", [FEATURE], 23, {FEATURE: "fused"}),
    ("gpt2", [FEATURE], None, {FEATURE: "torchscript"}),
    ("phi3", [FEATURE], None, {FEATURE: "torchscript"}),
    ("gpt2-tf", [FEATURE], None, {FEATURE: "tf2onnx"}),
])
def test_a_job_that_names_no_exporter_gets_fused_where_it_writes_the_model(tmp_path, model, features, opset, expected):
    from hatch_onnx.params import read_params
    from hatch_onnx.plan import resolve_plan

    params = tmp_path / "params.yaml"
    entry = {"checkpoint": str(checkpoint(model)), "features": features, **({"opset": opset} if opset else {})}
    params.write_text(yaml.safe_dump({"onnx": {"cache": str(tmp_path / "cache"), "models": {"m": entry}}}))
    jobs = resolve_plan(read_params(params))
    assert {job.feature: job.exporter for job in jobs} == expected
    # and the cache key names it, so a default export made before fused existed is not served for it
    key = jobs[0].key_inputs("f" * 32, {})
    assert key["exporter"]["name"] == expected[features[0]]


def test_the_cli_defaults_to_fused_unless_an_opset_is_demanded(tmp_path):
    checked = check_request(ExportRequest(model=str(checkpoint("llama")), feature=FEATURE), tmp_path / "out")
    assert checked.exporter == "fused"
    # --opset is what the graph is exported with (transformers.onnx's CLI): a demand, which fused (23) cannot meet
    checked = check_request(ExportRequest(model=str(checkpoint("llama")), feature=FEATURE, opset=18), tmp_path / "out")
    assert checked.exporter == "torchscript" and checked.opset == 18
    checked = check_request(ExportRequest(model=str(checkpoint("llama")), feature=FEATURE, exporter="torchscript"), tmp_path / "out")
    assert checked.exporter == "torchscript"
