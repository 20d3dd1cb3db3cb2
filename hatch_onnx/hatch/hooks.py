"""Registration with hatchling, through the ``hatch`` entry-point group (see pyproject.toml)."""

from __future__ import annotations

from hatchling.plugin import hookimpl

from hatch_onnx.hatch.plugin import OnnxBuildHook


@hookimpl
def hatch_register_build_hook() -> type[OnnxBuildHook]:
    return OnnxBuildHook
