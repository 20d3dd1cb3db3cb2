"""Which interpreter runs a Hatch build's exports: explicit choices first, then the user's environment."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_explicit_interpreters_win_and_must_be_able_to_export(tmp_path):
    from hatch_onnx.hatch.interpreter import find_export_python

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    chosen = find_export_python("/no/such/python", tmp_path, {"HATCH_ONNX_PYTHON": sys.executable})
    assert (chosen.python, chosen.source) == (sys.executable, "$HATCH_ONNX_PYTHON")
    with pytest.raises(ValueError, match=r"option `python` for build hook `onnx`: `/no/such/python` is not a Python"):
        find_export_python("/no/such/python", tmp_path, {})
    with pytest.raises(ValueError, match=r"\$HATCH_ONNX_PYTHON: .* cannot export: it lacks transformers, onnx, onnxruntime, torch or tensorflow"):
        find_export_python(None, tmp_path, {"HATCH_ONNX_PYTHON": str(bare / "bin" / "python")})


def test_the_users_environment_is_found_before_the_builds_own(tmp_path):
    from hatch_onnx.hatch.interpreter import _candidates, frontend_free_environ

    user = tmp_path / "user-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(user)], check=True)
    environ = {"VIRTUAL_ENV": str(user), "PATH": f"/usr/bin:{user / 'bin'}", "_": str(user / "bin" / "hatch")}
    assert [(str(path), source) for path, source in _candidates(environ)] == [
        (str(user / "bin" / "python"), "$VIRTUAL_ENV"), (str(user / "bin" / "python"), "PATH"),
        (str(user / "bin" / "python"), "$_"), (sys.executable, "the build's interpreter"),
    ]
    # pip hides the user's site-packages from its build with a sitecustomize on PYTHONPATH.
    cleaned = frontend_free_environ({"PYTHONPATH": "/tmp/pip-build-env-x1/site:/mine", "A": "1"})
    assert cleaned == {"PYTHONPATH": "/mine", "A": "1"}
