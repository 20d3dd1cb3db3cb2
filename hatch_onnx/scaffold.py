"""``hatch-onnx init``: give an existing project the same pipeline as this repository's demo.

Writes ``params.yaml`` (one model), ``dvc.yaml`` (an export stage per model, a package stage,
the wheel registered as a model artifact) and appends the ``[tool.hatch.build.hooks.onnx]``
section to ``pyproject.toml``. It refuses to overwrite anything: every check runs before the
first file is written.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

from hatch_onnx.errors import BadInputError
from hatch_onnx.hatch.folder import package_name
from hatch_onnx.schema import SAFE_NAME

HOOK_TABLE = "[tool.hatch.build.hooks.onnx]"


def _template(name: str) -> str:
    return resources.files("hatch_onnx").joinpath("templates", name).read_text(encoding="utf-8")


def _project_name(pyproject: Path, folder: Path) -> str:
    if pyproject.is_file():
        import tomllib

        name = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("name")
        if isinstance(name, str):
            return name
    return folder.resolve().name


def init_project(
    folder: Path,
    checkpoint: Path,
    name: Optional[str] = None,
    features: Sequence[str] = ("default",),
    destination: Optional[str] = None,
) -> list[Path]:
    """Write the three pieces into ``folder``; returns what was written."""
    from hatch_onnx.models import support_for
    from hatch_onnx.checkpoints import read_model_type

    folder = Path(folder)
    params_file, dvc_file, pyproject = folder / "params.yaml", folder / "dvc.yaml", folder / "pyproject.toml"
    for existing in (params_file, dvc_file):
        if existing.exists():
            raise BadInputError(f"{existing}: already exists; hatch-onnx init does not overwrite")
    if pyproject.is_file() and HOOK_TABLE in pyproject.read_text(encoding="utf-8"):
        raise BadInputError(f"{pyproject}: already has {HOOK_TABLE}; hatch-onnx init does not overwrite")
    name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", Path(checkpoint).resolve().name).strip("-.") or "model"
    if not SAFE_NAME.fullmatch(name):
        raise BadInputError(f"--name {name!r}: model names must be safe path components (letters, digits, . _ -)")
    absolute = checkpoint if Path(checkpoint).is_absolute() else (Path.cwd() / checkpoint)
    support = support_for(read_model_type(absolute), where=str(absolute))  # the checkpoint exists, its type is known
    for feature in features:
        support.check(feature, where=str(absolute))
    # Relative when the checkpoint lives in the project (the repository moves with it), else absolute.
    try:
        relative = os.path.relpath(absolute.resolve(), folder.resolve())
    except ValueError:  # another drive (Windows)
        relative = str(absolute.resolve())
    if relative.startswith(".."):
        relative = str(absolute.resolve())
    package = package_name(_project_name(pyproject, folder))  # the hook's default destination's package
    destination = destination or f"{package}/onnx"

    params_text = (
        _template("params.yaml")
        .replace("__NAME__", name)
        .replace("__CHECKPOINT__", json.dumps(Path(relative).as_posix()))
        .replace("__FEATURES__", json.dumps(list(features)))
    )
    dvc_text = _template("dvc.yaml").replace("__PACKAGE_CMD__", "hatch build -t wheel").replace("__PYPROJECT__", "pyproject.toml")
    hook_text = _template("pyproject-hook.toml").replace("__DESTINATION__", destination)

    params_file.write_text(params_text, encoding="utf-8")
    dvc_file.write_text(dvc_text, encoding="utf-8")
    if pyproject.is_file():
        with pyproject.open("a", encoding="utf-8") as handle:
            handle.write(hook_text)
    else:
        pyproject.write_text(
            '[build-system]\nrequires = ["hatchling", "hatch-onnx"]\nbuild-backend = "hatchling.build"\n\n'
            f'[project]\nname = "{package.replace("_", "-")}"\nversion = "0.1.0"\n' + hook_text,
            encoding="utf-8",
        )
    return [params_file, dvc_file, pyproject]


def needs_build_requirement(pyproject: Path) -> bool:
    """True when ``[build-system] requires`` lacks hatch-onnx (the hook would not load)."""
    import tomllib

    requires = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("build-system", {}).get("requires", [])
    return not any(re.match(r"hatch[-_]onnx\b", requirement) for requirement in requires)
