"""Mixed builds: PyTorch jobs in the default interpreter, TensorFlow jobs in one named for them.

transformers 5 has no TensorFlow classes. A build whose default interpreter has transformers 5
runs its TensorFlow jobs in ``--python-tf`` / ``$HATCH_ONNX_PYTHON_TF`` (an interpreter with
transformers 4.57 and hatch-onnx[tf]) and refuses, before any export, when none is named.
``scripts/test`` points ``$HATCH_ONNX_TEST_PYTHON_TF`` at the 4.57 environment on both lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import checkpoint
from hatch_onnx.errors import FrameworkError
from hatch_onnx.toolchain import installed_versions, runs_tensorflow

TF_PYTHON = os.environ.get("HATCH_ONNX_TEST_PYTHON_TF") or (sys.executable if runs_tensorflow(installed_versions()) else None)


def mixed_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"onnx": {"models": {
        "bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]},
        "bert-tf": {"checkpoint": str(checkpoint("bert-tf")), "features": ["default"]},
    }}}))
    return path


def build(params: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), *args],
                          capture_output=True, text=True, env=env)


def test_tf_jobs_without_a_tf_interpreter_are_refused_before_any_work(tmp_path, monkeypatch):
    """The default interpreter has transformers 5 and no TF interpreter is named: one line, exit 2."""
    from hatch_onnx import build as build_module
    from hatch_onnx.params import read_params
    from hatch_onnx.plan import resolve_plan

    transformers5 = {**installed_versions(), "transformers": "5.24.0", "tensorflow": None}
    monkeypatch.setattr(build_module, "interpreter_versions", lambda python: transformers5)
    monkeypatch.delenv("HATCH_ONNX_PYTHON_TF", raising=False)
    plan = resolve_plan(read_params(mixed_params(tmp_path)))
    with pytest.raises(FrameworkError) as info:
        build_module.resolve_toolchains(plan)
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    assert "bert-tf" in message and "transformers 5.24.0" in message and "--python-tf" in message and "$HATCH_ONNX_PYTHON_TF" in message
    assert set(build_module.resolve_toolchains([job for job in plan if job.framework == "pt"])) == {"pt"}  # PT alone is fine


@pytest.mark.slow
def test_cli_refuses_on_transformers_5_without_python_tf(tmp_path):
    if runs_tensorflow(installed_versions()):
        pytest.skip("this interpreter runs TensorFlow jobs itself: the refusal is tested on the transformers-5 line")
    env = {k: v for k, v in os.environ.items() if k != "HATCH_ONNX_PYTHON_TF"}
    result = build(mixed_params(tmp_path), "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--python-tf" in result.stderr and "bert-tf" in result.stderr
    assert not (tmp_path / "out").exists() and "exported" not in result.stdout


@pytest.mark.slow
def test_mixed_build_runs_tf_jobs_in_the_named_interpreter(tmp_path):
    if TF_PYTHON is None:
        pytest.fail("set HATCH_ONNX_TEST_PYTHON_TF to an interpreter with transformers 4.57 and hatch-onnx[tf] (scripts/test does)")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "HATCH_ONNX_PYTHON_TF"}
    first = build(mixed_params(tmp_path), "--python-tf", TF_PYTHON, "--out", str(out), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("exported") == 2
    manifest = json.loads((out / "manifest.json").read_text())
    pt, tf = manifest["models"]["bert"]["default"], manifest["models"]["bert-tf"]["default"]
    assert tf["source"]["framework"] == "tf" and tf["toolchain"]["transformers"].startswith("4.")
    assert tf["toolchain"]["tensorflow"] and "torch" not in tf["toolchain"]
    # each key keeps the toolchain of the interpreter that ran its job
    assert pt["toolchain"]["transformers"] == installed_versions()["transformers"]
    # the same interpreter named by the variable: every job hits
    again = build(mixed_params(tmp_path), "--out", str(out), env={**env, "HATCH_ONNX_PYTHON_TF": TF_PYTHON})
    assert again.returncode == 0 and "Nothing exported" in again.stdout, again.stderr
