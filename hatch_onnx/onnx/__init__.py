"""The ``transformers.onnx`` v4.24 API: a thin facade over the project's own modules.

The top floor of the package: ``OnnxConfig`` and its family come from :mod:`hatch_onnx.config`,
``FeaturesManager`` answers from the registry (:mod:`hatch_onnx.models`) and the checkpoint and
loading modules, ``export`` and ``validate_model_outputs`` call a framework back-end and the
validator. Nothing below imports this package. Names resolve lazily (PEP 562), so that
``import hatch_onnx`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hatch_onnx._lazy import lazy_getattr

_LAZY = {
    "OnnxConfig": "hatch_onnx.config",
    "OnnxConfigWithPast": "hatch_onnx.config",
    "OnnxSeq2SeqConfigWithPast": "hatch_onnx.config",
    "PatchingSpec": "hatch_onnx.config",
    "FeaturesManager": "hatch_onnx.onnx.features",
    "export": "hatch_onnx.onnx.convert",
    "validate_model_outputs": "hatch_onnx.onnx.convert",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from hatch_onnx.config import OnnxConfig, OnnxConfigWithPast, OnnxSeq2SeqConfigWithPast, PatchingSpec
    from hatch_onnx.onnx.convert import export, validate_model_outputs
    from hatch_onnx.onnx.features import FeaturesManager


__getattr__ = lazy_getattr(__name__, _LAZY)
