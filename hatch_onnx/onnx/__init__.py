"""The ``transformers.onnx`` v4.24 API, re-implemented for today's stack."""

from __future__ import annotations

from hatch_onnx.onnx.config import OnnxConfig, OnnxConfigWithPast, OnnxSeq2SeqConfigWithPast, PatchingSpec
from hatch_onnx.onnx.convert import export, validate_model_outputs
from hatch_onnx.onnx.features import FeaturesManager

__all__ = [
    "FeaturesManager",
    "OnnxConfig",
    "OnnxConfigWithPast",
    "OnnxSeq2SeqConfigWithPast",
    "PatchingSpec",
    "export",
    "validate_model_outputs",
]
