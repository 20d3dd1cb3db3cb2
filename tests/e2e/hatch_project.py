"""Helpers for the build-hook tests: a temporary project that builds with hatch-onnx from this tree.

Build frontends install ``[build-system] requires`` into isolated environments from a package
index. A wheel of the working tree, built once, is offered to them through find-links (pip reads
``PIP_FIND_LINKS``, hatch's uv-driven environments ``UV_FIND_LINKS``), so ``requires =
["hatchling", "hatch-onnx"]`` resolves to this code without network access to hatch-onnx.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "fixtures" / "checkpoints"
# The interpreter running the tests: its environment has torch, like the one a user builds from.
VENV_BIN = Path(sys.executable).parent
DESTINATION = "our_models/onnx"


def build_hatch_onnx_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (wheel,) = out.glob("hatch_onnx-*.whl")
    return wheel


def tool_env(wheels: Path, hatch_data: Path, cache: Path, *, frameworks: bool = True) -> dict[str, str]:
    """The environment of a user who runs ``hatch build``, with or without their venv activated."""
    env = {k: v for k, v in os.environ.items() if k not in {"_", "VIRTUAL_ENV", "HATCH_ONNX_PYTHON", "PYTHONPATH"}}
    if frameworks:
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
        env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    else:  # a shell with no environment on PATH: nothing that has torch is findable
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(wheels), os.environ.get("PIP_FIND_LINKS")]))
    env["UV_FIND_LINKS"] = str(wheels)
    env["HATCH_DATA_DIR"] = str(hatch_data)  # hatch's build environments, per test session
    env["HATCH_ONNX_CACHE"] = str(cache)
    return env


def make_project(path: Path, models: dict, *, hook: Optional[dict] = None) -> Path:
    """A project ``our-models`` 1.2.3 (src layout) whose params.yaml exports ``models``.

    ``models`` maps names to params entries whose ``checkpoint`` names a fixture type
    (``bert``); the fixture is copied into the project so that a test can change it.
    """
    (path / "src" / "our_models").mkdir(parents=True)
    (path / "src" / "our_models" / "__init__.py").write_text('"""Our models."""\n')
    hook = {"destination": DESTINATION, **(hook or {})}
    hook_lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in hook.items())
    (path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling", "hatch-onnx"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "our-models"\nversion = "1.2.3"\nrequires-python = ">=3.10"\n\n'
        f"[tool.hatch.build.hooks.onnx]\n{hook_lines}\n"
    )
    params = {}
    for name, entry in models.items():
        target = path / "checkpoints" / name
        shutil.copytree(CHECKPOINTS / f"{entry['checkpoint']}-tiny", target)
        params[name] = {**entry, "checkpoint": f"checkpoints/{name}"}
    (path / "params.yaml").write_text(yaml.safe_dump({"onnx": {"models": params}}, sort_keys=False))
    (path / ".gitignore").write_text("/dist/\n/src/our_models/onnx/\n")
    return path


def run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return proc, time.perf_counter() - started


def hatch_build(project: Path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, float]:
    return run([str(VENV_BIN / "hatch"), "build", *args], project, env)


def wheels_in(dist: Path) -> list[Path]:
    return sorted(dist.glob("*.whl"))


def wheel_manifest(wheel: Path, destination: str = DESTINATION) -> dict:
    with zipfile.ZipFile(wheel) as archive:
        return json.loads(archive.read(f"{destination}/manifest.json"))


def digests(manifest: dict) -> dict[str, str]:
    """``{"bert-tiny/default/model.onnx": xxh3_128, ...}``: what "the same models" means."""
    return {file["path"]: file["xxh3_128"] for features in manifest["models"].values()
            for entry in features.values() for file in entry["files"].values()}
