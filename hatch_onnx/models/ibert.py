"""ibert: RoBERTa with integer-only kernels (exported in float mode, quant_mode off)."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport, TEXT_ENCODER_FEATURES


class IBertOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "ibert",
    IBertOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
)
