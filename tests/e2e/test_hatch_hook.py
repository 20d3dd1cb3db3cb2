"""The ``onnx`` build hook: real ``hatch build`` / ``python -m build`` / ``pip wheel`` runs in temporary projects.

The slow tests share one project (bert-tiny and vit-tiny, built once by ``hatch build``) and one
cache; a test that changes a project works on its own copy. The hook's in-process tests are in
tests/test_hatch_plugin.py.
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
    assert {path for path in digests(manifest) if path.endswith(".onnx")} == SHIPPED
    # The manifest lists every file the wheel ships in the models folder, side files included.
    shipped = {name for name in names if name.startswith(f"{DESTINATION}/")}
    assert shipped == {f"{DESTINATION}/{path}" for path in digests(manifest)} | {
        f"{DESTINATION}/__init__.py", f"{DESTINATION}/manifest.json"}
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


@pytest.mark.slow
def test_tensorflow_models_export_in_the_interpreter_named_by_option_python_tf(tools):
    """A mixed project: PyTorch jobs in the user's environment, TensorFlow jobs in `python-tf`'s."""
    import os

    from hatch_onnx.toolchain import installed_versions, runs_tensorflow

    tf_python = os.environ.get("HATCH_ONNX_TEST_PYTHON_TF") or (sys.executable if runs_tensorflow(installed_versions()) else None)
    assert tf_python, "set HATCH_ONNX_TEST_PYTHON_TF to an interpreter with transformers 4.57 and hatch-onnx[tf] (scripts/test does)"
    models = {"bert-tiny": {"checkpoint": "bert", "features": ["default"]},
              "bert-tf-tiny": {"checkpoint": "bert-tf", "features": ["default"]}}
    path = make_project(tools.base / "mixed", models, hook={"python-tf": tf_python})
    built, _ = hatch_build(path, env_for(tools), "-t", "wheel")
    assert built.returncode == 0, built.stderr
    manifest = wheel_manifest(_wheel(path))
    tf_entry = manifest["models"]["bert-tf-tiny"]["default"]
    assert tf_entry["source"]["framework"] == "tf" and tf_entry["toolchain"]["transformers"].startswith("4.")
    assert manifest["models"]["bert-tiny"]["default"]["toolchain"]["transformers"] == installed_versions()["transformers"]


@pytest.mark.slow
def test_variants_ship_in_the_wheel_and_load_by_name(tools):
    models = {"bert-tiny": {"checkpoint": "bert", "features": ["default"], "variants": ["int8"]}}
    path = make_project(tools.base / "variants", models)
    built, _ = hatch_build(path, env_for(tools), "-t", "wheel")
    assert built.returncode == 0, built.stderr
    wheel = _wheel(path)
    manifest = wheel_manifest(wheel)
    variant = manifest["models"]["bert-tiny"]["default"]["variants"]["int8"]
    (file,) = variant["files"].values()
    with zipfile.ZipFile(wheel) as archive:
        assert archive.getinfo(f"{DESTINATION}/{file['path']}").file_size == file["size"]
    assert variant["validation"]["last_hidden_state"]["cosine"] >= 0.98
