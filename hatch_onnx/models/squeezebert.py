"""squeezebert: BERT whose projections are grouped 1x1 convolutions."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport, TEXT_ENCODER_FEATURES


class SqueezeBertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "squeezebert",
    SqueezeBertOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
)
