"""exporter genai (hatch_onnx.genai_builder): onnxruntime-genai's builder makes the graph, we validate, cache and ship it.

The builder needs transformers 5: the exports run on that line; on 4.57 the refusal is tested.
onnxruntime's CPU GroupQueryAttention wants a head size that is a multiple of 16 and the
llama/qwen2 fixtures have 8, so the exports use copies of them at hidden size 64 (4 heads of
16), written here from the fixtures' own configs and tokenizers with seeded random weights.
Each export costs about 20 s (the builder's subprocess imports torch and transformers).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import checkpoint, cli_in_fresh_process
from hatch_onnx import genai_builder, generation
from hatch_onnx.errors import BadInputError, GenerationError, ParamsError
from hatch_onnx.exporting import ExportRequest, check_request
from hatch_onnx.toolchain import transformers_major

TRANSFORMERS_5 = (transformers_major() or 0) >= 5
needs_transformers_5 = pytest.mark.skipif(not TRANSFORMERS_5, reason="onnxruntime-genai's builder needs transformers 5")


def head16_checkpoint(model_type: str, folder: Path) -> Path:
    """The ``<model_type>-tiny`` fixture at hidden size 64 (heads of 16), seeded weights, its tokenizer files."""
    import torch
    import transformers

    source = checkpoint(model_type)
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            shutil.copyfile(path, folder / path.name)
    config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    config.hidden_size = 64
    if getattr(config, "head_dim", None):
        config.head_dim = 16
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama16(tmp_path_factory) -> Path:
    return head16_checkpoint("llama", tmp_path_factory.mktemp("llama16") / "llama-head16")


@pytest.fixture(scope="module")
def llama_export(llama16, tmp_path_factory):
    from hatch_onnx.exporting import export_checkpoint

    out = tmp_path_factory.mktemp("llama-genai")
    report = export_checkpoint(ExportRequest(model=llama16, feature="causal-lm-with-past", exporter="genai",
                                             layouts=("optimum", "transformers.js")), out, log=lambda line: None)
    return out, report


# --- what ships ----------------------------------------------------------------------------------


@pytest.mark.slow
@needs_transformers_5
def test_a_genai_export_is_the_fused_graph_validated_and_generation_checked(llama_export):
    import onnx

    out, report = llama_export
    assert report["exporter"] == "genai" and report["opset"] == 22
    validation = report["validation"]
    assert all(o["max_abs_diff"] <= report["atol"] for o in validation["outputs"].values())
    assert validation["inputs"]["input_ids"] == [1, 11] and validation["inputs"]["past_key_values.0.key"][2] == 7  # one row over a past
    figures = validation["generation"]
    assert figures["steps"] == generation.NEW_TOKENS and figures["batch"] == 2 and figures["tokens_equal"]
    assert figures["padding"] == "right" and figures["max_logits_diff"] <= report["atol"]
    # the genai interface, recorded as it is: no position_ids, keys then values
    names = [node["name"] for node in validation["graph"]["inputs"]]
    assert names == ["input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.1.key",
                     "past_key_values.0.value", "past_key_values.1.value"]
    # the fused graph is what ships, in both layouts, its weights beside it under the name it refers to
    for graph in (out / "model.onnx", out / "onnx" / "model.onnx"):
        model = onnx.load(str(graph), load_external_data=False)
        ops = {(node.domain, node.op_type) for node in model.graph.node}
        assert ("com.microsoft", "GroupQueryAttention") in ops and ("com.microsoft", "SkipSimplifiedLayerNormalization") in ops
        locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data if entry.key == "location"}
        assert locations == {"model.onnx.data"} and (graph.parent / "model.onnx.data").is_file()
    # the builder's genai_config.json, pointing at Optimum's graph; the checkpoint's tokenizer, not the builder's copy
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["filename"] == "model.onnx" and genai["search"]["past_present_share_buffer"] is True
    assert "position_ids" not in genai["model"]["decoder"]["inputs"]
    assert (out / "tokenizer.json").read_bytes() == (checkpoint("llama") / "tokenizer.json").read_bytes()


@pytest.mark.slow
@needs_transformers_5
def test_the_genai_graph_cannot_take_a_left_padded_batch(llama_export, llama16):
    """Why generation feeds it right-padded prompts: the same check, fed left-padded, fails."""
    import transformers

    out, report = llama_export
    config = genai_builder.interface_config(_support("llama"), transformers.AutoConfig.from_pretrained(llama16, local_files_only=True))
    model = _model(llama16)
    assert generation.validate_generation(out / "model.onnx", model, config, _tolerance(report))["tokens_equal"]
    config.PADDING_SIDE = "left"  # this instance only
    with pytest.raises(GenerationError, match="generation: step 0: logits differ"):
        generation.validate_generation(out / "model.onnx", model, config, _tolerance(report))


def _support(model_type):
    from hatch_onnx.models import support_for

    return support_for(model_type)


def _model(folder):
    from hatch_onnx.loading import load_model

    return load_model("causal-lm-with-past", str(folder), "pt")[0]


def _tolerance(report):
    from hatch_onnx.validation import Tolerance

    return Tolerance(atol=report["atol"])


@pytest.mark.slow
@needs_transformers_5
def test_a_build_with_exporter_genai_caches_and_says_so(tmp_path):
    model = head16_checkpoint("qwen2", tmp_path / "qwen2-head16")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"onnx": {"models": {"qwen2": {
        "checkpoint": str(model), "features": ["causal-lm-with-past"], "exporter": "genai", "variants": ["int4"]}}}}))
    out = tmp_path / "out"
    first = _build(params, out)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("exported") == 2  # the graph and its int4 variant
    entry = json.loads((out / "manifest.json").read_text())["models"]["qwen2"]["causal-lm-with-past"]
    assert entry["source"]["exporter"] == "genai" and entry["toolchain"]["onnxruntime-genai"]
    assert entry["validation"]["generation"]["tokens_equal"] and entry["validation"]["generation"]["padding"] == "right"
    roles = {Path(record["path"]).name: record["role"] for record in entry["files"].values()}
    assert roles["model.onnx"] == "graph" and roles["model.onnx.data"] == "graph-data" and roles["genai_config.json"] == "genai-config"
    assert json.loads((out / "qwen2" / "causal-lm-with-past" / "genai_config.json").read_text())["model"]["type"] == "qwen2"
    # int4 of the builder's graph, whose embedding gathers the transpose of the head's weight: weights-checked,
    # the tied weight stored once (as the head's 4-bit weight, which the embedding's GatherBlockQuantized reads)
    variant = entry["variants"]["int4"]
    assert variant["weights"] and all(f["max_abs_diff"] <= f["atol"] for f in variant["weights"].values())
    import onnx

    int4 = onnx.load(str(out / "qwen2" / "causal-lm-with-past" / "model.int4.onnx"))
    ops = [node.op_type for node in int4.graph.node]
    assert "MatMul" not in ops and "Transpose" not in ops and ops.count("GatherBlockQuantized") == 1
    config = json.loads((model / "config.json").read_text())
    table = sorted([config["vocab_size"], config["hidden_size"]])
    assert not [t.name for t in int4.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and sorted(t.dims) == table]
    again = _build(params, out)
    assert again.returncode == 0, again.stderr
    assert "Nothing exported" in again.stdout and " hit " in again.stdout


def _build(params: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), "--out", str(out)],
                          capture_output=True, text=True)


# --- refusals: one line, exit 2, before any model loads ------------------------------------------


@pytest.mark.parametrize("model_type, feature, message", [
    ("gpt2", "causal-lm-with-past", "model type 'gpt2' is not one onnxruntime-genai's builder makes"),
    ("olmo2", "causal-lm-with-past", "model type 'olmo2' is not one"),
    ("qwen3", "causal-lm", "exports causal-lm-with-past only, not feature 'causal-lm'"),
    ("llama", "causal-lm-with-past", "head size 8: onnxruntime's CPU GroupQueryAttention needs a multiple of 16"),
])
def test_what_the_builder_cannot_make_is_refused_before_loading(tmp_path, model_type, feature, message):
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")) as caught:
        check_request(ExportRequest(model=checkpoint(model_type), feature=feature, exporter="genai"), tmp_path / "out")
    assert caught.value.exit_code == 2


def test_the_cli_refuses_in_one_line_and_imports_no_framework(tmp_path):
    """The refusal on this interpreter's line: transformers 4 refuses the builder; on 5, an unsupported type."""
    model = "qwen3" if not TRANSFORMERS_5 else "gpt2"
    run, imported = cli_in_fresh_process(["export", "--model", str(checkpoint(model)), "--feature", "causal-lm-with-past",
                                          "--exporter", "genai", str(tmp_path / "out")])
    assert run.returncode == 2, run.stderr
    assert imported == [] and len(run.stderr.strip().splitlines()) == 1
    expected = "builder needs transformers 5" if not TRANSFORMERS_5 else "model type 'gpt2' is not one"
    assert expected in run.stderr and "exporter genai" in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(TRANSFORMERS_5, reason="the transformers 4 line's refusal")
def test_the_transformers_4_line_refuses_exporter_genai(tmp_path):
    with pytest.raises(BadInputError, match="needs transformers 5; this interpreter has transformers 4"):
        check_request(ExportRequest(model=checkpoint("qwen3"), feature="causal-lm-with-past", exporter="genai"), tmp_path / "out")


def test_params_name_the_exporter_key_when_genai_cannot_build_a_model(tmp_path):
    from hatch_onnx.params import read_params
    from hatch_onnx.plan import resolve_plan

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"onnx": {"cache": str(tmp_path / "cache"), "models": {"gpt2": {
        "checkpoint": str(checkpoint("gpt2")), "features": ["causal-lm-with-past"], "exporter": "genai"}}}}))
    with pytest.raises(ParamsError, match=r"onnx\.models\.gpt2\.exporter: .*model type 'gpt2' is not one") as caught:
        resolve_plan(read_params(params))
    assert caught.value.key == "onnx.models.gpt2.exporter"


def test_the_cache_key_of_a_genai_export_holds_the_builder_version():
    from hatch_onnx.plan import Job

    job = Job(name="m", feature="causal-lm-with-past", checkpoint=Path("x"), model_type="qwen3", framework="pt", opset=14,
              atol=None, exporter="genai", allow_new_head=False)
    inputs = job.key_inputs("f" * 32, {"onnxruntime-genai": "0.18.0", "torch": "2"})
    assert inputs["exporter"]["name"] == "genai" and inputs["versions"]["onnxruntime-genai"] == "0.18.0"
    torchscript = Job(**{**job.__dict__, "exporter": "torchscript"}).key_inputs("f" * 32, {"onnxruntime-genai": "0.18.0"})
    assert "onnxruntime-genai" not in torchscript["versions"]  # other jobs' keys stay as they were
