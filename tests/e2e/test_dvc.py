"""The DVC pipeline, with the real dvc in temporary git repositories: only what changed re-runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import checkpoint

pytestmark = pytest.mark.slow


def sh(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def ran(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr))


def edit_params(repo: Path, change) -> None:
    path = repo / "params.yaml"
    data = yaml.safe_load(path.read_text())
    change(data["onnx"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, e2e_env) -> Path:
    repo = tmp_path_factory.mktemp("dvc-repo")
    for name in ("bert", "gpt2"):
        shutil.copytree(checkpoint(name), repo / "checkpoints" / name)
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling", "hatch-onnx"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "our-models"\nversion = "1.4.0"\n'
    )
    (repo / "our_models").mkdir()
    (repo / "our_models" / "__init__.py").write_text("")
    sh(["git", "init", "-q"], repo, e2e_env)
    sh(["dvc", "init", "-q"], repo, e2e_env)
    sh(["hatch-onnx", "init", "--model", "checkpoints/bert", "--name", "bert"], repo, e2e_env)
    with pytest.raises(AssertionError, match="does not overwrite"):
        sh(["hatch-onnx", "init", "--model", "checkpoints/bert"], repo, e2e_env)
    assert "[tool.hatch.build.hooks.onnx]" in (repo / "pyproject.toml").read_text()
    # No index serves this working tree's hatch-onnx to an isolated build environment here, so
    # the package stage builds in the test's environment (as the repository's demo does).
    dvc_yaml = repo / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("cmd: hatch build -t wheel", "cmd: python -m build --wheel --no-isolation --outdir dist ."))
    (repo / ".gitignore").write_text("/our_models/onnx/\n/build/\n.hatch-onnx-cache/\n")
    edit_params(repo, lambda onnx: onnx["models"].update(gpt2={"checkpoint": "checkpoints/gpt2", "features": ["causal-lm-with-past"]}))
    sh(["git", "add", "-A"], repo, e2e_env)
    sh(["git", "commit", "-qm", "pipeline"], repo, e2e_env)
    return repo


def test_first_repro_runs_every_stage(repo, e2e_env):
    result = sh(["dvc", "repro"], repo, e2e_env)
    assert ran(result) == {"toolchain", "export@bert", "export@gpt2", "package"}
    assert json.loads((repo / "build/toolchain.json").read_text())["pt"]["torch"].startswith("2.13.0")  # 2.13.0+cpu
    assert [p.name for p in (repo / "dist").glob("*.whl")] == ["our_models-1.4.0-py3-none-any.whl"]
    assert (repo / "build/onnx/bert/default/model.onnx").is_file()
    assert (repo / "build/onnx/gpt2/causal-lm-with-past/model.onnx").is_file()
    metrics = json.loads(sh(["dvc", "metrics", "show", "--json"], repo, e2e_env).stdout)
    (data,) = [v["data"] for v in metrics.values()]
    figures = data["build/metrics/gpt2.json"]["data"]["causal-lm-with-past"]["logits"]
    assert 0 <= figures["max_abs_diff"] <= figures["atol"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"export@bert", "export@gpt2"} <= set(lock["stages"])


def test_nothing_changed_runs_nothing(repo, e2e_env):
    result = sh(["dvc", "repro"], repo, e2e_env)
    assert ran(result) == {"toolchain"}  # always runs; wrote the same versions, so nothing else did
    assert "didn't change" in result.stdout


def test_one_byte_of_one_checkpoint(repo, e2e_env):
    weights = repo / "checkpoints/gpt2/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor
    weights.write_bytes(bytes(data))
    assert ran(sh(["dvc", "repro"], repo, e2e_env)) == {"toolchain", "export@gpt2", "package"}


def test_one_models_params(repo, e2e_env):
    edit_params(repo, lambda onnx: onnx["models"]["bert"].update(atol=1.0e-3))
    assert ran(sh(["dvc", "repro"], repo, e2e_env)) == {"toolchain", "export@bert", "package"}


def test_forced_repro_hits_the_cache(repo, e2e_env):
    start = time.perf_counter()
    result = sh(["dvc", "repro", "--force"], repo, e2e_env)
    elapsed = time.perf_counter() - start
    assert ran(result) == {"toolchain", "export@bert", "export@gpt2", "package"}
    assert result.stdout.count("Nothing exported") == 2
    print(f"dvc repro --force (warm cache): {elapsed:.1f} s")


def test_failing_validation_fails_repro_and_records_nothing(repo, e2e_env):
    before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["export@bert"]
    edit_params(repo, lambda onnx: onnx["models"]["bert"].update(atol=1.0e-12))
    result = sh(["dvc", "repro", "export"], repo, e2e_env, check=False)
    assert result.returncode != 0 and "exceeds atol" in result.stdout + result.stderr
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["export@bert"]
    assert after == before  # the failed run recorded nothing
    assert not (repo / "build/onnx/bert").exists()  # and left no stale output behind
    # back to the recorded params: DVC restores the recorded output from its cache, running nothing
    edit_params(repo, lambda onnx: onnx["models"]["bert"].update(atol=1.0e-3))
    assert ran(sh(["dvc", "repro", "export"], repo, e2e_env)) <= {"toolchain"}
    assert (repo / "build/onnx/bert/default/model.onnx").is_file()


def test_exp_run_with_a_new_opset(repo, e2e_env):
    sh(["git", "add", "-A"], repo, e2e_env)
    sh(["git", "commit", "-qm", "state"], repo, e2e_env)
    result = sh(["dvc", "exp", "run", "export", "-S", "onnx.opset=18"], repo, e2e_env)
    assert ran(result) == {"toolchain", "export@bert", "export@gpt2"}
    manifest = json.loads((repo / "build/onnx/manifest.json").read_text())
    assert {entry["opset"] for model in manifest["models"].values() for entry in model.values()} == {18}


def test_a_global_default_re_runs_every_export(repo, e2e_env):
    """onnx.dtype, onnx.variants, onnx.min_cosine and onnx.layout change outputs: DVC sees them."""
    edit_params(repo, lambda onnx: onnx.update(layout=["optimum", "transformers.js"]))
    assert ran(sh(["dvc", "repro"], repo, e2e_env)) == {"toolchain", "export@bert", "export@gpt2", "package"}
    assert (repo / "build/onnx/bert/default/onnx/model.onnx").is_file()


def test_another_toolchain_re_runs_the_exports(repo, e2e_env):
    """An upgrade (here: the other transformers line's interpreter) changes build/toolchain.json."""
    import os
    import sys

    other = os.environ.get("HATCH_ONNX_TEST_PYTHON_TF")
    if not other or Path(other).resolve() == Path(sys.executable).resolve():
        pytest.skip("needs the other transformers line's interpreter (the transformers-5 line runs this with the 4.57 one)")
    before = json.loads((repo / "build/toolchain.json").read_text())
    result = sh(["dvc", "repro", "export"], repo, {**e2e_env, "HATCH_ONNX_PYTHON": other})
    assert json.loads((repo / "build/toolchain.json").read_text()) != before
    assert ran(result) == {"toolchain", "export@bert", "export@gpt2"}


def test_the_repository_demo_pipeline(tmp_path, e2e_env):
    """The repository's own params.yaml, dvc.yaml and demo/ package, run whole in a fresh repo."""
    from conftest import ROOT

    repo = tmp_path / "demo-repo"
    repo.mkdir()
    # dvc.lock too, as a clone has it: dvc repro rewrites it in place, and must leave it as committed
    for name in ("params.yaml", "dvc.yaml", ".dvcignore", ".gitignore", "dvc.lock"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "demo", repo / "demo", ignore=shutil.ignore_patterns("onnx", "__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for model in params["onnx"]["models"].values():
        shutil.copytree(ROOT / model["checkpoint"], repo / model["checkpoint"])
    sh(["git", "init", "-q"], repo, e2e_env)
    sh(["dvc", "init", "-q"], repo, e2e_env)
    first = sh(["dvc", "repro"], repo, e2e_env)
    assert ran(first) == {f"export@{name}" for name in params["onnx"]["models"]} | {"toolchain", "package"}
    (wheel,) = (repo / "dist").glob("*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("demo_models/onnx/manifest.json"))
    assert manifest["version"] == "0.1.0"
    for name, model in params["onnx"]["models"].items():
        for feature in model["features"]:
            assert f"demo_models/onnx/{name}/{feature}/model.onnx" in names
            assert feature in manifest["models"][name]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert "package" in lock["stages"]
    # The committed dvc.lock is what a fresh clone's demo writes (scripts/demo runs the 4.57 line,
    # whose toolchain.json the lock records): a newcomer starts with a clean tree.
    from hatch_onnx.toolchain import transformers_major

    if transformers_major() == 4:
        import difflib

        written, committed = (repo / "dvc.lock").read_text(), (ROOT / "dvc.lock").read_text()  # a clone's git diff
        changes = "".join(difflib.unified_diff(committed.splitlines(True), written.splitlines(True), "committed", "written", n=1))
        assert written == committed, f"dvc.lock is stale: run scripts/demo on a clean clone and commit the dvc.lock it writes\n{changes}"
    artifacts = yaml.safe_load((repo / "dvc.yaml").read_text())["artifacts"]
    assert artifacts["onnx-models"]["type"] == "model"
    plots = sh(["dvc", "plots", "show", "--json"], repo, e2e_env)
    assert "max_abs_diff" in plots.stdout
    again = sh(["dvc", "repro"], repo, e2e_env)
    assert ran(again) == {"toolchain"} and again.stdout.count("didn't change") == len(params["onnx"]["models"]) + 1
    shown = sh(["hatch-onnx", "show", "build/onnx"], repo, e2e_env)
    assert "gpt2-tiny" in shown.stdout and "causal-lm-with-past" in shown.stdout
