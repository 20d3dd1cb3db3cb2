"""Find shipped ONNX models by name and feature, and open them in onnxruntime.

The one-liner, in a wheel built with hatch-onnx's build hook (``destination = "our_models/onnx"``)::

    from our_models.onnx import load
    path, session = load("bert-tiny", "default")   # session is None without onnxruntime

The hook copies this very file, as ``__init__.py``, next to the models' ``manifest.json``, so
the user's package answers by itself: an installed wheel needs neither hatch-onnx nor an ML
framework, only onnxruntime for the session. With hatch-onnx installed, the same functions
read any folder that ``hatch-onnx build --out DIR`` wrote: ``load("bert-tiny", root="DIR")``.

Standard library only; onnxruntime is imported when a session is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

__all__ = ["Model", "load", "manifest", "model_path", "models"]

MANIFEST = "manifest.json"
# Where the models are when this file ships beside them (the package folder in a wheel).
HERE = Path(__file__).resolve().parent

PathLike = Union[str, Path]


class Model(NamedTuple):
    path: Path
    session: Any  # onnxruntime.InferenceSession, or None when onnxruntime is not installed


def manifest(root: Optional[PathLike] = None) -> dict:
    """The parsed ``manifest.json`` of ``root`` (default: the folder this module ships in)."""
    folder = Path(root) if root is not None else HERE
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (pass root= a folder written by hatch-onnx)")
    return json.loads(path.read_text(encoding="utf-8"))


def models(root: Optional[PathLike] = None) -> list[tuple[str, str]]:
    """Every shipped ``(name, feature)`` pair, sorted."""
    return sorted((name, feature) for name, features in manifest(root)["models"].items() for feature in features)


def model_path(name: str, feature: str = "default", root: Optional[PathLike] = None, variant: Optional[str] = None) -> Path:
    """The path of ``model.onnx`` (or ``model.<variant>.onnx``) for ``name`` and ``feature``.

    A graph's external data, if any, lies beside it. ``variant`` is one the build made: ``o1``,
    ``o2``, ``o3``, ``int8``, ``fp16`` or ``int4`` (see the manifest's ``variants``).
    """
    folder = Path(root) if root is not None else HERE
    shipped = manifest(folder)["models"]
    if name not in shipped:
        raise KeyError(f"no model {name!r} in {folder / MANIFEST} (models: {', '.join(sorted(shipped)) or 'none'})")
    if feature not in shipped[name]:
        raise KeyError(f"model {name!r} has no feature {feature!r} (features: {', '.join(sorted(shipped[name]))})")
    entry = shipped[name][feature]
    role = "graph"
    if variant is not None:
        made = entry.get("variants", {})
        if variant not in made:
            raise KeyError(f"{name!r} {feature!r} has no variant {variant!r} (variants: {', '.join(sorted(made)) or 'none'})")
        entry, role = made[variant], "variant"
    files = entry["files"]
    for file in files.values():  # a truncated install would otherwise fail deep inside onnxruntime
        path = folder / file["path"]
        if not path.is_file() or path.stat().st_size != file["size"]:
            raise FileNotFoundError(f"{path}: missing or not {file['size']} bytes as the manifest says; reinstall the package")
    # The manifest names each file's role and each graph's layout: Optimum's layout first.
    graphs = sorted((file.get("layout") != "optimum", file["path"]) for file in files.values() if file.get("role") == role)
    if not graphs:
        raise KeyError(f"{folder / MANIFEST}: {name!r} {feature!r} lists no {role} (a manifest written before hatch-onnx "
                       "recorded roles: build it again)")
    return folder / graphs[0][1]


def load(name: str, feature: str = "default", root: Optional[PathLike] = None, variant: Optional[str] = None,
         **session_options: Any) -> Model:
    """``(path, session)`` for ``name`` and ``feature`` (and ``variant``); ``session`` is ``None`` when onnxruntime is absent.

    ``session_options`` go to ``onnxruntime.InferenceSession`` (``providers`` defaults to every
    available one, as onnxruntime itself would choose them).
    """
    path = model_path(name, feature, root, variant)
    try:
        import onnxruntime
    except ImportError:
        return Model(path, None)
    session_options.setdefault("providers", onnxruntime.get_available_providers())
    # From the path, not the bytes: external data (model.onnx.data) is found beside the graph.
    return Model(path, onnxruntime.InferenceSession(str(path), **session_options))
