"""hatch-onnx: Hugging Face checkpoints to validated, cached, versioned ONNX artifacts.

The public API mirrors ``transformers.onnx`` (v4.24). Names are resolved lazily (PEP 562) so
that ``import hatch_onnx`` loads no ML framework and stays fast: the build reads the cache
without ever touching torch or TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hatch_onnx import onnx as _api  # itself lazy: importing it loads nothing heavy
from hatch_onnx.__about__ import __version__
from hatch_onnx._lazy import lazy_getattr

# The seed API comes from hatch_onnx.onnx (which resolves each name on first use); the errors
# a caller catches most often come from hatch_onnx.errors.
_LAZY = {
    **dict.fromkeys(_api.__all__, "hatch_onnx.onnx"),
    **dict.fromkeys(("HatchOnnxError", "ValidationError", "UnsupportedFeatureError"), "hatch_onnx.errors"),
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from hatch_onnx.errors import HatchOnnxError, UnsupportedFeatureError, ValidationError
    from hatch_onnx.config import OnnxConfig, OnnxConfigWithPast, OnnxSeq2SeqConfigWithPast, PatchingSpec
    from hatch_onnx.onnx.convert import export, validate_model_outputs
    from hatch_onnx.onnx.features import FeaturesManager


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)
