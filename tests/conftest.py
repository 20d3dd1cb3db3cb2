from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "fixtures" / "checkpoints"

# transformers imports TensorFlow when it is installed unless told not to; PyTorch tests don't need it.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def checkpoint(model_type: str) -> Path:
    return CHECKPOINTS / f"{model_type}-tiny"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder: no test sees another's exports."""
    monkeypatch.setenv("HATCH_ONNX_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def e2e_env(tmp_path_factory) -> dict:
    """An environment for real tools (dvc, hatch, hatch-onnx) with one cache shared by the module."""
    import sys

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HATCH_ONNX_CACHE"] = str(tmp_path_factory.mktemp("module-cache"))
    env.update({"DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"})
    return env


def pytest_collection_modifyitems(config, items):
    """On transformers 5 (no TensorFlow classes) the ``tf`` tests cannot run: CI runs them on the 4.57 line."""
    from hatch_onnx.checkpoints import transformers_has_tensorflow

    if transformers_has_tensorflow():
        return
    skip = pytest.mark.skip(reason="the TensorFlow path needs transformers 4.x (tested on the 4.57 line)")
    for item in items:
        if "tf" in item.keywords:
            item.add_marker(skip)

# The warm export server (hatch_onnx.server) is opt-in; a user's setting must not leak into tests
# that check what their own process imports and exports.
os.environ["HATCH_ONNX_SERVER"] = "0"


@pytest.fixture
def read_only(tmp_path_factory):
    """``read_only(folder)`` -> the folder seen read-only: a read-only bind mount as root (whom
    file modes do not stop), the folder with its write bits removed otherwise."""
    import contextlib
    import subprocess

    cleanups = []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            for path in [folder, *folder.rglob("*")]:
                if path.is_dir():
                    mode = path.stat().st_mode
                    path.chmod(mode & ~0o222)
                    cleanups.append(lambda p=path, m=mode: p.chmod(m))
            return folder
        view = tmp_path_factory.mktemp("read-only-view")
        subprocess.run(["mount", "--bind", str(folder), str(view)], check=True)
        cleanups.append(lambda: subprocess.run(["umount", "-l", str(view)], check=False))
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        return view

    yield make
    for cleanup in reversed(cleanups):
        with contextlib.suppress(Exception):
            cleanup()


# What a refusal must not import: every ML framework, onnx and numpy.
HEAVY = ("torch", "tensorflow", "transformers", "onnxruntime", "tf2onnx", "onnx", "numpy")


def cli_in_fresh_process(args: list[str]) -> tuple["subprocess.CompletedProcess", list[str]]:
    """``hatch_onnx.cli.main(args)`` in a fresh interpreter: the process (its exit code is main's), and the
    :data:`HEAVY` modules it imported."""
    import ast
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hatch_onnx.cli import main\n"
        f"code = main({args!r})\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
        "sys.exit(code)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    imported = ast.literal_eval(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else ["<no output>"]
    return run, imported
