"""The interpreter that runs exports when the build's own has no ML framework.

Build frontends install only ``[build-system] requires`` into an isolated environment: hatch-onnx's
light core, no torch. Exports that miss the cache therefore run in a worker started with another
interpreter, chosen in this order:

1. ``$HATCH_ONNX_PYTHON``, then the hook's ``python`` option: taken as given, and an error if it
   lacks the frameworks;
2. the virtual environment the user built from: ``$VIRTUAL_ENV`` (an activated environment, as
   ``python -m build`` and ``pip wheel`` pass it on), the virtual or conda environments on
   ``PATH`` (``hatch build`` activates its own build environment, but leaves the user's
   ``PATH`` behind it), the environment of the command the shell ran (``$_``, for
   ``.venv/bin/hatch build`` without activation), and the build's own interpreter (pip builds
   with the user's interpreter and hides its packages through ``PYTHONPATH``).

A candidate qualifies when, in isolated mode (``-I``: its own site-packages, no ``PYTHONPATH``),
it can find transformers, onnx, onnxruntime and torch or tensorflow. The probe uses
``importlib.util.find_spec``, which imports nothing: about 30 ms a candidate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Optional

from hatch_onnx.toolchain import PYTHON_ENV

REQUIRED = ("transformers", "onnx", "onnxruntime")
FRAMEWORKS = ("torch", "tensorflow")
_PROBE = (
    "import importlib.util as u, json; "
    f"print(json.dumps({{n: u.find_spec(n) is not None for n in {REQUIRED + FRAMEWORKS!r}}}))"
)


@dataclasses.dataclass(frozen=True)
class ExportPython:
    """The interpreter chosen (``None`` when no candidate has the frameworks) and what was tried."""

    python: Optional[str]
    source: str  # where it came from, for messages: "$VIRTUAL_ENV", "PATH", ...
    tried: tuple[str, ...] = ()


def missing_packages(python: str) -> Optional[list[str]]:
    """What ``python`` lacks to export (``[]`` if nothing), or ``None`` if it does not run."""
    try:
        probe = subprocess.run([python, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60)
        found = json.loads(probe.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    missing = [name for name in REQUIRED if not found[name]]
    if not any(found[name] for name in FRAMEWORKS):
        missing.append(" or ".join(FRAMEWORKS))
    return missing


def _environment_python(prefix: Path) -> Optional[Path]:
    for path in (prefix / "bin" / "python", prefix / "Scripts" / "python.exe", prefix / "python.exe"):
        if path.is_file():
            return path
    return None


def _is_environment(prefix: Path) -> bool:
    return (prefix / "pyvenv.cfg").is_file() or (prefix / "conda-meta").is_dir()


def _candidates(environ: Mapping[str, str]) -> Iterator[tuple[Path, str]]:
    if virtual_env := environ.get("VIRTUAL_ENV"):
        if python := _environment_python(Path(virtual_env)):
            yield python, "$VIRTUAL_ENV"
    for entry in environ.get("PATH", "").split(os.pathsep):
        prefix = Path(entry).parent
        if entry and _is_environment(prefix) and (python := _environment_python(prefix)):
            yield python, "PATH"
    if command := environ.get("_"):  # bash and zsh: the program the shell started (hatch, pip, python)
        prefix = Path(command).absolute().parent.parent
        if _is_environment(prefix) and (python := _environment_python(prefix)):
            yield python, "$_"
    yield Path(sys.executable), "the build's interpreter"


def find_export_python(configured: Optional[str], root: Path, environ: Mapping[str, str] = os.environ) -> ExportPython:
    """The interpreter for export workers; raises ``ValueError`` if an explicit choice cannot export.

    ``configured`` is the hook's ``python`` option (a path, relative to ``root``, or a command).
    """
    explicit = [(environ.get(PYTHON_ENV), f"${PYTHON_ENV}"), (configured, "option `python` for build hook `onnx`")]
    for value, source in explicit:
        if not value:
            continue
        path = Path(value).expanduser()
        resolved = str(path if path.is_absolute() else root / path) if os.sep in value else shutil.which(value)
        missing = missing_packages(resolved) if resolved else None
        if missing is None:
            raise ValueError(f"{source}: `{value}` is not a Python interpreter that runs")
        if missing:
            raise ValueError(f"{source}: `{value}` cannot export: it lacks {', '.join(missing)} (pip install 'hatch-onnx[torch]' there)")
        return ExportPython(resolved, source, (resolved,))

    own_prefix = Path(sys.prefix).absolute()
    tried: list[str] = []
    for python, source in _candidates(environ):
        # Not resolved: a virtual environment's python is a symlink to the base interpreter,
        # and resolving it would lose the environment (and its site-packages).
        text = os.path.abspath(python)
        if text in tried or (Path(text).parent.parent == own_prefix and source != "the build's interpreter"):
            continue
        tried.append(text)
        if missing_packages(text) == []:
            return ExportPython(text, source, tuple(tried))
    return ExportPython(None, "none found", tuple(tried))


def frontend_free_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without pip's build isolation, for workers started with the user's interpreter.

    pip builds with the user's own interpreter and hides its site-packages by a
    ``sitecustomize`` on ``PYTHONPATH`` (``.../pip-build-env-*/site``); a worker inheriting it
    would not see torch.
    """
    env = dict(environ)
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and not any(part.startswith("pip-build-env-") for part in Path(p).parts)]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    return env
