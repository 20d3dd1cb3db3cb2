"""The CLI: legacy flags, one-line errors with the right exit code, nothing left behind on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import checkpoint
from hatch_onnx.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hatch_onnx", *args], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hatch-onnx: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_missing_directory(tmp_path):
    result = run_cli("export", "--model", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert_one_line_error(result, 2, "nope", "not found")


def test_missing_config_json(tmp_path):
    result = run_cli("export", "--model", str(tmp_path), str(tmp_path / "out"))
    assert_one_line_error(result, 2, "config.json")


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama-ish"}))
    result = run_cli("export", "--model", str(tmp_path), str(tmp_path / "out"))
    assert_one_line_error(result, 2, "llama-ish", "supported: albert, bart, ")


def test_unsupported_feature_lists_features(tmp_path):
    result = run_cli("export", "--model", str(checkpoint("vit")), "--feature", "causal-lm", str(tmp_path / "out"))
    assert_one_line_error(result, 2, "causal-lm", "supported: default, image-classification, masked-im")


def test_opset_below_minimum(tmp_path):
    result = run_cli("export", "--model", str(checkpoint("bert")), "--opset", "9", str(tmp_path / "out"))
    assert_one_line_error(result, 2, "opset 9", "minimum 14", "bert")
    assert not (tmp_path / "out").exists()


def test_a_failed_build_prints_its_table_and_returns_the_errors_exit_code(monkeypatch, capsys):
    from hatch_onnx import build
    from hatch_onnx.errors import BuildError

    def failing(*args, **kwargs):
        raise BuildError("1 of 1 job(s) failed: m:default (bad)", exit_code=2, result=build.BuildResult((), None))

    monkeypatch.setattr(build, "run_build", failing)
    assert main(["build", "--params", "params.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("job ") and err == "hatch-onnx: error: 1 of 1 job(s) failed: m:default (bad)\n"
    assert BuildError("x").exit_code == 1 and BuildError("x", exit_code=2).exit_code == 2


def test_features_command():
    result = run_cli("features")
    assert result.returncode == 0
    assert "gpt2: default, default-with-past, causal-lm, causal-lm-with-past" in result.stdout
    assert run_cli("features", "t5").stdout.split() == ["default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past"]
    assert_one_line_error(run_cli("features", "nope"), 2, "nope")


@pytest.mark.slow
def test_export_with_legacy_flags_and_report(tmp_path):
    report = tmp_path / "report.json"
    # no sub-command, as `python -m transformers.onnx` was called
    result = run_cli("--model", str(checkpoint("gpt2")), "--feature", "causal-lm-with-past", "--framework", "pt",
                     "--preprocessor", "tokenizer", "--report", str(report), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "Validated" in result.stdout and "max abs diff" in result.stdout
    # the program ends without the interpreter's teardown (cli._exit_without_teardown): all of its output still arrives
    assert result.stdout.rstrip().splitlines()[-1].strip().startswith("load ")
    assert (tmp_path / "out" / "model.onnx").is_file()
    data = json.loads(report.read_text())
    assert data["opset"] == 14 and data["exporter"] == "torchscript"
    assert data["validation"]["inputs"]["input_ids"] == [3, 11]
    assert set(data["timings"]) >= {"load", "export", "validate", "total"}
    logits = data["validation"]["outputs"]["logits"]
    assert logits["max_abs_diff"] <= logits["atol"] and logits["shape"][:2] == [3, 11]
    # OUTPUT is a model folder a consumer opens alone: the checkpoint's config and tokenizer files
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(data["files"])
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (checkpoint("gpt2") / "tokenizer.json").read_bytes()
    genai = json.loads((tmp_path / "out" / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["filename"] == "model.onnx" and genai["search"]["past_present_share_buffer"] is False


@pytest.mark.slow
def test_export_in_the_transformers_js_layout(tmp_path):
    out = tmp_path / "out"
    result = run_cli("export", "--model", str(checkpoint("llama")), "--feature", "causal-lm-with-past", "--layout", "transformers.js", str(out))
    assert result.returncode == 0, result.stderr
    assert f"Validated {out / 'onnx' / 'model.onnx'}" in result.stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "config.json", "genai_config.json", "generation_config.json", "onnx/model.onnx", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "onnx/model.onnx"
    assert_one_line_error(run_cli("export", "--model", str(checkpoint("bert")), "--layout", "tfjs", str(tmp_path / "x")), 2, "--layout")


@pytest.mark.slow
def test_new_head_refused_unless_allowed(tmp_path):
    result = run_cli("export", "--model", str(checkpoint("bert")), "--feature", "sequence-classification", str(tmp_path / "out"))
    assert_one_line_error(result, 2, "classifier.weight", "--allow-new-head")
    assert "pooler" in result.stderr  # the pooler feeds the classifier: it is named too
    assert not (tmp_path / "out" / "model.onnx").exists()
    allowed = run_cli("export", "--model", str(checkpoint("bert")), "--feature", "sequence-classification",
                      "--allow-new-head", str(tmp_path / "out"))
    assert allowed.returncode == 0 and "WARNING" in allowed.stderr and "classifier.weight" in allowed.stderr
    # the default feature does not use the pooler the checkpoint lacks: no new head
    plain = run_cli("export", "--model", str(checkpoint("bert")), str(tmp_path / "plain"))
    assert plain.returncode == 0 and "WARNING" not in plain.stderr


@pytest.mark.slow
def test_broken_graph_fails_with_exit_1_and_no_model(tmp_path, monkeypatch, capsys):
    """A graph traced through a patched op differs from the model: exit 1, no model.onnx."""
    import torch

    from hatch_onnx.frameworks import pytorch
    from hatch_onnx.onnx.config import PatchingSpec

    def off_by_one(*args, **kwargs):
        return torch.nn.functional.__dict__["_original_layer_norm"](*args, **kwargs) + 1.0

    monkeypatch.setitem(torch.nn.functional.__dict__, "_original_layer_norm", torch.nn.functional.layer_norm)
    original = pytorch.transformers_patches
    monkeypatch.setattr(pytorch, "transformers_patches", lambda: original() + [PatchingSpec(torch.nn.functional, "layer_norm", off_by_one)])
    out = tmp_path / "out"
    code = main(["export", "--model", str(checkpoint("bert")), str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "last_hidden_state" in err and "exceeds atol" in err
    assert not (out / "model.onnx").exists()
    assert list(out.iterdir()) == []  # the staging folder is gone too


@pytest.mark.slow
def test_debug_shows_traceback(tmp_path):
    result = run_cli("--debug", "export", "--model", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert result.returncode != 0 and "Traceback" in result.stderr
