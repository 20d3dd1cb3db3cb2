"""The ``onnx`` build hook: real ``hatch build`` / ``python -m build`` / ``pip wheel`` runs in temporary projects.

The slow tests share one project (bert-tiny and vit-tiny, built once by ``hatch build``) and one
cache; a test that changes a project works on its own copy. The quick tests at the end drive the
hook in-process for what needs no real build (option errors, size warnings, external data).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from hatch_project import (
    DESTINATION,
    ROOT,
    VENV_BIN,
    build_hatch_onnx_wheel,
    digests,
    hatch_build,
    make_project,
    run,
    tool_env,
    wheel_manifest,
    wheels_in,
)

TWO_MODELS = {
    "bert-tiny": {"checkpoint": "bert", "features": ["default"]},
    "vit-tiny": {"checkpoint": "vit", "features": ["image-classification"]},
}
SHIPPED = {"bert-tiny/default/model.onnx", "vit-tiny/image-classification/model.onnx"}


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    """The hatch-onnx wheel of this tree, and a shared cache and hatch data folder."""
    base = tmp_path_factory.mktemp("hatch-hook")
    # A fresh folder each session: uv caches find-links wheels by location and version, so a
    # reused folder could serve an older build of this same version.
    wheels = base / "wheels"
    build_hatch_onnx_wheel(wheels)
    return SimpleNamespace(base=base, wheels=wheels, hatch_data=base / "hatch-data", cache=base / "cache")


def env_for(tools, frameworks: bool = True) -> dict[str, str]:
    return tool_env(tools.wheels, tools.hatch_data, tools.cache, frameworks=frameworks)


@pytest.fixture(scope="module")
def project(tools):
    """``our-models`` with two models, after its first ``hatch build`` (which exports both)."""
    path = make_project(tools.base / "project", TWO_MODELS, hook={"jobs": 2})
    first, seconds = hatch_build(path, env_for(tools))
    return SimpleNamespace(path=path, first=first, seconds=seconds)


def _wheel(project_path: Path) -> Path:
    (wheel,) = wheels_in(project_path / "dist")
    return wheel


# --- hatch build ------------------------------------------------------------------------


@pytest.mark.slow
def test_hatch_build_ships_the_models_in_a_pure_wheel(project, tools):
    assert project.first.returncode == 0, project.first.stderr
    # The isolated build environment ran this tree's hook (not a stale hatch-onnx from a package cache).
    installed = list(tools.hatch_data.glob("env/virtual/our-models/*/hatch-build/lib/python*/site-packages/hatch_onnx/hatch/plugin.py"))
    assert installed and all(p.read_bytes() == (ROOT / "hatch_onnx/hatch/plugin.py").read_bytes() for p in installed)
    assert "onnx: 2 model(s): 2 exported, 0 from the cache" in project.first.stdout + project.first.stderr
    wheel = _wheel(project.path)
    assert wheel.name == "our_models-1.2.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "Root-Is-Purelib: true" in archive.read("our_models-1.2.3.dist-info/WHEEL").decode()
    manifest = wheel_manifest(wheel)
    assert manifest["version"] == "1.2.3"
    assert set(digests(manifest)) == SHIPPED
    # Keyed by the worker's toolchain (the user's venv), not by the bare build environment's.
    assert manifest["models"]["bert-tiny"]["default"]["toolchain"]["torch"] is not None
    expected = {f"{DESTINATION}/{path}" for path in SHIPPED} | {
        f"{DESTINATION}/__init__.py", f"{DESTINATION}/manifest.json", "our_models/__init__.py",
        f"{DESTINATION}/bert-tiny/default/tokenizer.json", f"{DESTINATION}/bert-tiny/default/config.json",
        f"{DESTINATION}/vit-tiny/image-classification/preprocessor_config.json",
    }
    assert expected <= names
    assert not any("checkpoints/" in name or "params.yaml" in name for name in names)
    # The wheel's graphs are the manifest's bytes.
    from hatch_onnx.fingerprint import file_digest

    with zipfile.ZipFile(wheel) as archive:
        for path, digest in digests(manifest).items():
            target = project.path / "graph.onnx"
            target.write_bytes(archive.read(f"{DESTINATION}/{path}"))
            assert file_digest(target) == digest
            target.unlink()


@pytest.mark.slow
def test_sdist_carries_params_manifest_and_models(project):
    (sdist,) = (project.path / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames()}
        manifest = json.loads(archive.extractfile(f"our_models-1.2.3/src/{DESTINATION}/manifest.json").read())
    # The models folder is git-ignored in the project, and shipped all the same.
    assert {"params.yaml", "PKG-INFO", f"src/{DESTINATION}/__init__.py"} <= names
    assert {f"src/{DESTINATION}/{path}" for path in SHIPPED} <= names
    assert digests(manifest) == digests(wheel_manifest(_wheel(project.path)))


@pytest.mark.slow
def test_cached_rebuild_exports_nothing_and_hatchlings_switch_skips_the_hook(project, tools):
    before = digests(wheel_manifest(_wheel(project.path)))
    again, cached_seconds = hatch_build(project.path, env_for(tools))
    assert again.returncode == 0, again.stderr
    output = again.stdout + again.stderr
    assert output.count("onnx: 2 model(s): 0 exported, 2 from the cache") == 2  # sdist, then wheel
    assert "exported in" not in output
    assert digests(wheel_manifest(_wheel(project.path))) == before

    # The same project with hatchling's switch for hooks: no models, and the baseline time.
    bare = tools.base / "no-hooks"
    no_hooks, bare_seconds = hatch_build(project.path, {**env_for(tools), "HATCH_BUILD_NO_HOOKS": "true"}, str(bare))
    assert no_hooks.returncode == 0, no_hooks.stderr
    with zipfile.ZipFile(wheels_in(bare)[0]) as archive:
        assert not any(name.startswith(DESTINATION) for name in archive.namelist())
    print(f"\nhatch build, cached: {cached_seconds:.1f} s (sdist + wheel); first: {project.seconds:.1f} s; "
          f"without the hook: {bare_seconds:.1f} s")


@pytest.mark.slow
def test_python_m_build_and_pip_wheel_give_the_same_models(project, tools):
    expected = digests(wheel_manifest(_wheel(project.path)))
    out = tools.base / "frontends"
    # python -m build builds the sdist, then the wheel from the unpacked sdist in another folder.
    built, _ = run([sys.executable, "-m", "build", "--outdir", str(out / "build"), str(project.path)], project.path, env_for(tools))
    assert built.returncode == 0, built.stderr + built.stdout
    assert "onnx: 2 model(s) from the sdist, checked against its manifest" in built.stdout + built.stderr
    assert digests(wheel_manifest(wheels_in(out / "build")[0])) == expected
    # pip builds in place, with the user's interpreter behind its own isolation.
    piped, _ = run([str(VENV_BIN / "pip"), "wheel", "--no-deps", "-v", "-w", str(out / "pip"), str(project.path)],
                   project.path, env_for(tools))
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert digests(wheel_manifest(wheels_in(out / "pip")[0])) == expected


# --- installing ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime_venv(tools):
    """A fresh virtual environment with onnxruntime and numpy only: no torch, no TensorFlow, no hatch-onnx."""
    venv = tools.base / "runtime-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "onnxruntime", "numpy"], check=True, env=env_for(tools),
                   capture_output=True)
    return python


RUN_BERT = """
import importlib.util, numpy as np
assert not any(importlib.util.find_spec(name) for name in ("torch", "tensorflow", "hatch_onnx"))
from our_models.onnx import load, models
path, session = load("bert-tiny", "default")
feeds = {i.name: np.ones((2, 7), dtype=np.int64) for i in session.get_inputs()}
(hidden,) = session.run(None, feeds)
assert hidden.shape[:2] == (2, 7), hidden.shape
assert load("vit-tiny", "image-classification").session is not None
print(path, models())
"""


@pytest.mark.slow
def test_installed_wheel_runs_in_onnxruntime_without_torch(project, runtime_venv, tools):
    install = subprocess.run([str(runtime_venv), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(_wheel(project.path))],
                             capture_output=True, text=True, env=env_for(tools))
    assert install.returncode == 0, install.stderr
    ran = subprocess.run([str(runtime_venv), "-c", RUN_BERT], capture_output=True, text=True, cwd=tools.base)
    assert ran.returncode == 0, ran.stderr
    assert "site-packages/our_models/onnx/bert-tiny/default/model.onnx" in ran.stdout


@pytest.mark.slow
def test_editable_install_reads_the_models_from_the_tree_and_clean_removes_them(project, runtime_venv, tools):
    copy = tools.base / "editable"
    shutil.copytree(project.path, copy, ignore=shutil.ignore_patterns("dist"))
    install = subprocess.run([str(runtime_venv), "-m", "pip", "install", "--no-deps", "-e", str(copy)],
                             capture_output=True, text=True, env=env_for(tools))
    assert install.returncode == 0, install.stderr[-3000:]
    ran = subprocess.run([str(runtime_venv), "-c", RUN_BERT], capture_output=True, text=True, cwd=tools.base)
    assert ran.returncode == 0, ran.stderr
    assert f"{copy}/src/{DESTINATION}/bert-tiny/default/model.onnx" in ran.stdout
    subprocess.run([str(runtime_venv), "-m", "pip", "uninstall", "-q", "-y", "our-models"], check=True)

    cleaned, _ = run([str(VENV_BIN / "hatch"), "clean"], copy, env_for(tools))
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (copy / "src" / DESTINATION).exists()
    assert (copy / "src" / "our_models" / "__init__.py").is_file() and (copy / "params.yaml").is_file()
    assert any(tools.cache.iterdir())  # the cache is not the hook's to clean


# --- changes and failures --------------------------------------------------------------


@pytest.mark.slow
def test_changed_checkpoint_reexports_only_that_model_and_needs_an_interpreter(project, tools):
    copy = tools.base / "changed"
    shutil.copytree(project.path, copy, ignore=shutil.ignore_patterns("dist"))
    bare = env_for(tools, frameworks=False)

    # No Python with torch anywhere: a fully cached build still works, keyed by the toolchain of record.
    cached, _ = hatch_build(copy, bare, "-t", "wheel")
    assert cached.returncode == 0, cached.stderr
    assert "every model came from the cache" in cached.stdout + cached.stderr
    assert digests(wheel_manifest(_wheel(copy))) == digests(wheel_manifest(_wheel(project.path)))

    config = copy / "checkpoints" / "vit-tiny" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "label2id": {"cat": 0, "dog": 1}}))
    shutil.rmtree(copy / "dist")
    failed, _ = hatch_build(copy, bare, "-t", "wheel")
    assert failed.returncode != 0
    assert "vit-tiny:image-classification must be exported" in failed.stderr
    assert "option `python`" in failed.stderr and "$HATCH_ONNX_PYTHON" in failed.stderr
    assert not (copy / "dist").exists() or not wheels_in(copy / "dist")

    rebuilt, _ = hatch_build(copy, env_for(tools), "-t", "wheel")
    assert rebuilt.returncode == 0, rebuilt.stderr
    output = rebuilt.stdout + rebuilt.stderr
    assert "onnx: 2 model(s): 1 exported, 1 from the cache" in output
    assert "vit-tiny:image-classification exported" in output and "bert-tiny:default exported" not in output
    old, new = wheel_manifest(_wheel(project.path)), wheel_manifest(_wheel(copy))
    assert new["models"]["bert-tiny"] == old["models"]["bert-tiny"]
    vit_old, vit_new = old["models"]["vit-tiny"]["image-classification"], new["models"]["vit-tiny"]["image-classification"]
    assert vit_new["source"]["checkpoint_fingerprint"] != vit_old["source"]["checkpoint_fingerprint"]


@pytest.mark.slow
def test_a_model_that_fails_validation_fails_the_build_and_writes_no_wheel(tools):
    # bert-tiny's graph differs from PyTorch by ~5e-7: an atol of 1e-9 cannot pass.
    path = make_project(tools.base / "failing", {"bert-tiny": {"checkpoint": "bert", "features": ["default"], "atol": 1.0e-9}})
    failed, _ = hatch_build(path, env_for(tools))
    assert failed.returncode != 0
    assert "1 of 1 job(s) failed: bert-tiny:default" in failed.stderr and "atol" in failed.stderr
    assert not (path / "dist").exists() or not list((path / "dist").iterdir())
    assert not (path / "src" / DESTINATION).exists()


# --- in-process: options, sizes, external data ------------------------------------------


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
    files = {name: {"path": f"big/default/{name}", "size": (model_dir / name).stat().st_size, "xxh3_128": file_digest(model_dir / name)}
             for name in ("model.onnx", "model.onnx.data")}
    manifest = {"format": 1, "version": "1.2.3", "hatch_onnx": "0.1.0", "models": {"big": {"default": {"files": files}}}}
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

    (model_dir / "model.onnx.data").write_bytes(b"\0" * files["model.onnx.data"]["size"])  # same size, other bytes
    with pytest.raises(ValueError, match="differs from .*manifest.json"):
        make_hook(tmp_path, {"destination": DESTINATION}).initialize("standard", {"force_include": {}})


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


def test_a_cache_inside_the_project_that_the_sdist_would_carry_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("HATCH_ONNX_CACHE")  # params.yaml's relative cache, then
    app = RecordingApp()
    (tmp_path / "params.yaml").write_text("onnx:\n  cache: .hatch-onnx-cache\n  models:\n    m:\n      checkpoint: c\n")
    sdist_config = SimpleNamespace(include_path=lambda path: path.startswith(".hatch-onnx-cache/"))
    make_hook(tmp_path, {}, "sdist", sdist_config, app)._warn_if_sdist_ships_the_cache()
    ((kind, message),) = app.messages
    assert kind == "warning" and "`.hatch-onnx-cache/` is inside the project and the sdist would carry it" in message
