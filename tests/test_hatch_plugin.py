"""The ``onnx`` build hook in-process: its options, warnings and sdist handling, no real build.

The real ``hatch build`` / ``python -m build`` / ``pip wheel`` runs are in tests/e2e/test_hatch_hook.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2e.hatch_project import DESTINATION


class RecordingApp:
    """Stands in for hatchling's Application: keeps what the hook displays."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def __getattr__(self, name: str):
        if not name.startswith("display_"):
            raise AttributeError(name)
        return lambda message="", **_: self.messages.append((name[len("display_"):], message))


def make_hook(root: Path, config: dict, target: str = "wheel", build_config=None, app=None):
    from hatch_onnx.hatch.plugin import OnnxBuildHook

    metadata = SimpleNamespace(version="1.2.3", core=SimpleNamespace(name="our-models"))
    build_config = build_config or SimpleNamespace(sources={"src/": ""})
    return OnnxBuildHook(str(root), config, build_config, metadata, str(root / "dist"), target, app or RecordingApp())


@pytest.mark.parametrize(("config", "error", "message"), [
    ({"params": 3}, TypeError, "Option `params` for build hook `onnx` must be a string"),
    ({"destination": ["x"]}, TypeError, "Option `destination` for build hook `onnx` must be a string"),
    ({"destination": "/abs"}, ValueError, "Option `destination` for build hook `onnx` must be a relative path"),
    ({"destination": "../up"}, ValueError, "Option `destination` for build hook `onnx` must be a relative path"),
    ({"python": 3.11}, TypeError, "Option `python` for build hook `onnx` must be a string"),
    ({"python-tf": ["py"]}, TypeError, "Option `python-tf` for build hook `onnx` must be a string"),
    ({"jobs": "2"}, TypeError, "Option `jobs` for build hook `onnx` must be an integer"),
    ({"jobs": 0}, ValueError, "Option `jobs` for build hook `onnx` must be at least 1"),
    ({"destinaton": "x"}, ValueError, "Unknown option `destinaton` for build hook `onnx`"),
])
def test_options_are_checked_and_errors_name_the_option_and_the_hook(tmp_path, config, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        make_hook(tmp_path, config).check_options()


def test_hatchling_keys_are_accepted_and_defaults_follow_the_project(tmp_path):
    hook = make_hook(tmp_path, {"dependencies": ["x"], "require-runtime-dependencies": True,
                                "require-runtime-features": ["a"], "enable-by-default": False})
    hook.check_options()
    assert (hook.config_params, hook.config_destination, hook.config_python, hook.config_jobs) == ("params.yaml", "our_models/onnx", "", 1)
    (tmp_path / "src" / "our_models").mkdir(parents=True)
    assert hook.source_path == "src/our_models/onnx"  # the wheel's `src/` rewrite, reversed


@pytest.mark.parametrize("name", ["our-models", "Our.Models", "our__models", "a-b.c_d", "x", "Models2"])
def test_the_package_name_is_hatchlings_for_valid_project_names(name):
    import re

    from hatch_onnx.hatch.folder import package_name

    assert package_name(name) == re.sub(r"[-_.]+", "_", name).lower()


def test_the_package_name_of_an_odd_folder_name_is_still_an_identifier():
    from hatch_onnx.hatch.folder import package_name

    assert (package_name("my models!"), package_name("--"), package_name("Our Models 2")) == ("my_models", "models", "our_models_2")


@pytest.mark.slow
def test_a_hook_build_leaves_the_process_environment_alone(tmp_path, monkeypatch):
    """The workers get an environment without pip's isolation; hatchling's own is never swapped."""
    import os
    import sys

    import yaml

    from conftest import checkpoint
    from hatch_onnx import pool

    (tmp_path / "src" / "our_models").mkdir(parents=True)
    models = {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"onnx": {"models": models}}))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pip-build-env-x1" / "site"))  # pip hides the user's packages so
    monkeypatch.setenv("HATCH_ONNX_PYTHON", sys.executable)
    environ, before = os.environ, dict(os.environ)
    started: list[tuple[dict, dict]] = []

    def recording(framework, base=None):
        env = real(framework, base)
        started.append((dict(os.environ), env))
        return env

    real = pool.worker_env
    monkeypatch.setattr(pool, "worker_env", recording)
    app = RecordingApp()
    make_hook(tmp_path, {"destination": DESTINATION}, app=app).initialize("standard", {"force_include": {}})

    assert ("info", f"onnx: 1 model(s): 1 exported, 0 from the cache (exports run by {sys.executable}, "
                    "from $HATCH_ONNX_PYTHON)") in app.messages
    assert os.environ is environ and dict(os.environ) == before
    ((during, worker),) = started
    assert during == before  # not swapped while the build ran either
    assert "pip-build-env" not in worker["PYTHONPATH"] and worker["USE_TORCH"] == "1"


def test_size_warnings_name_the_file_and_the_limits(tmp_path, monkeypatch):
    from hatch_onnx.hatch import plugin

    big, small = tmp_path / "model.onnx.data", tmp_path / "model.onnx"
    big.write_bytes(b"x" * 300)
    small.write_bytes(b"x" * 10)
    assert plugin.size_warnings([big, small], tmp_path) == []
    monkeypatch.setattr(plugin, "PYPI_FILE_LIMIT", 100)
    monkeypatch.setattr(plugin, "ZIP64_LIMIT", 200)
    warnings = plugin.size_warnings([big, small], tmp_path)
    assert len(warnings) == 2 and warnings[0].startswith("model.onnx.data is") and "PyPI" in warnings[0] and "Zip64" in warnings[1]
    assert len(plugin.artifact_warnings(big)) == 2


def test_external_data_travels_with_its_graph_from_an_sdist(tmp_path):
    """A wheel built from an sdist: the shipped folder is verified and included whole."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from hatch_onnx import runtime
    from hatch_onnx.fingerprint import file_digest

    folder = tmp_path / "src" / DESTINATION
    model_dir = folder / "big" / "default"
    model_dir.mkdir(parents=True)
    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "weight")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "weight"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, model_dir / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    files = {name: {"path": f"big/default/{name}", "size": (model_dir / name).stat().st_size, "xxh3_128": file_digest(model_dir / name),
                    "role": role, "layout": "optimum"}
             for name, role in (("model.onnx", "graph"), ("model.onnx.data", "graph-data"))}
    manifest = {"format": 2, "version": "1.2.3", "hatch_onnx": "0.1.0", "models": {"big": {"default": {"files": files}}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "PKG-INFO").write_text("Metadata-Version: 2.4\nName: our-models\nVersion: 1.2.3\n")
    (tmp_path / "params.yaml").write_text("onnx:\n  models:\n    big:\n      checkpoint: gone\n")

    build_data: dict = {"force_include": {}}
    app = RecordingApp()
    make_hook(tmp_path, {"destination": DESTINATION}, app=app).initialize("standard", build_data)
    assert ("info", "onnx: 1 model(s) from the sdist, checked against its manifest") in app.messages
    assert build_data["force_include"][str(model_dir / "model.onnx.data")] == f"{DESTINATION}/big/default/model.onnx.data"
    assert build_data["force_include"][str(model_dir / "model.onnx")] == f"{DESTINATION}/big/default/model.onnx"
    assert build_data["force_include"][str(folder / "__init__.py")] == f"{DESTINATION}/__init__.py"

    path, session = runtime.load("big", root=folder)
    (y,) = session.run(None, {"x": np.ones((2, 8), dtype=np.float32)})
    assert path == model_dir / "model.onnx" and y.shape == (2, 8)
    with pytest.raises(KeyError, match="no model 'small'.*models: big"):
        runtime.load("small", root=folder)

    # A file the manifest does not list (smuggled into the sdist) fails the build: nothing extra ships.
    (model_dir / "evil.py").write_text("print('hi')\n")
    with pytest.raises(ValueError, match="files its manifest does not list.*evil.py"):
        make_hook(tmp_path, {"destination": DESTINATION}).initialize("standard", {"force_include": {}})
    (model_dir / "evil.py").unlink()

    (model_dir / "model.onnx.data").write_bytes(b"\0" * files["model.onnx.data"]["size"])  # same size, other bytes
    with pytest.raises(ValueError, match="differs from .*manifest.json"):
        make_hook(tmp_path, {"destination": DESTINATION}).initialize("standard", {"force_include": {}})


def test_a_cache_inside_the_project_that_the_sdist_would_carry_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("HATCH_ONNX_CACHE")  # params.yaml's relative cache, then
    app = RecordingApp()
    (tmp_path / "params.yaml").write_text("onnx:\n  cache: .hatch-onnx-cache\n  models:\n    m:\n      checkpoint: c\n")
    sdist_config = SimpleNamespace(include_path=lambda path: path.startswith(".hatch-onnx-cache/"))
    make_hook(tmp_path, {}, "sdist", sdist_config, app)._warn_if_sdist_ships_the_cache()
    ((kind, message),) = app.messages
    assert kind == "warning" and "`.hatch-onnx-cache/` is inside the project and the sdist would carry it" in message


def test_the_hooks_folder_may_not_hold_or_lie_inside_a_checkpoint(tmp_path, monkeypatch):
    """The hook replaces its folder whole: a checkpoint inside it would be deleted, one around it
    would change its fingerprint. Both are refused in one line, naming the hook's folder, before any export."""
    import shutil
    import sys

    import yaml

    from conftest import checkpoint
    from hatch_onnx.errors import BadInputError

    monkeypatch.setenv("HATCH_ONNX_PYTHON", sys.executable)
    monkeypatch.setenv("HATCH_ONNX_CACHE", str(tmp_path / "cache"))
    package = tmp_path / "src" / "our_models"
    inside = package / "onnx" / "ckpt"  # the checkpoint lives in the hook's folder (which is ours: it has our manifest)
    shutil.copytree(checkpoint("bert"), inside)
    (package / "onnx" / "manifest.json").write_text('{"hatch_onnx": "0", "models": {}}')
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"onnx": {"models": {"bert": {"checkpoint": str(inside)}}}}))
    with pytest.raises(BadInputError, match=r"^the hook's folder .*/src/our_models/onnx: contains the checkpoint"):
        make_hook(tmp_path, {"destination": DESTINATION}).initialize("standard", {"force_include": {}})
    assert (inside / "config.json").is_file() and not list((tmp_path / "cache").glob("v1/*/*"))

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"onnx": {"models": {"bert": {"checkpoint": str(package)}}}}))
    shutil.copytree(checkpoint("bert"), package, dirs_exist_ok=True)
    with pytest.raises(BadInputError, match=r"^the hook's folder .*: lies inside the checkpoint"):
        make_hook(tmp_path, {"destination": DESTINATION}).initialize("standard", {"force_include": {}})
