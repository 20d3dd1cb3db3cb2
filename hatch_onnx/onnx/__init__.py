"""The ``transformers.onnx`` v4.24 API, re-implemented for today's stack.

Names resolve lazily (PEP 562): the architecture modules import ``hatch_onnx.onnx.config``,
and an eager import of ``features`` here (which reads the architecture registry) would make
``import hatch_onnx.models`` circular.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hatch_onnx._lazy import lazy_getattr

_LAZY = {
    "OnnxConfig": "hatch_onnx.onnx.config",
    "OnnxConfigWithPast": "hatch_onnx.onnx.config",
    "OnnxSeq2SeqConfigWithPast": "hatch_onnx.onnx.config",
    "PatchingSpec": "hatch_onnx.onnx.config",
    "FeaturesManager": "hatch_onnx.onnx.features",
    "export": "hatch_onnx.onnx.convert",
    "validate_model_outputs": "hatch_onnx.onnx.convert",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from hatch_onnx.onnx.config import OnnxConfig, OnnxConfigWithPast, OnnxSeq2SeqConfigWithPast, PatchingSpec
    from hatch_onnx.onnx.convert import export, validate_model_outputs
    from hatch_onnx.onnx.features import FeaturesManager


__getattr__ = lazy_getattr(__name__, _LAZY)
