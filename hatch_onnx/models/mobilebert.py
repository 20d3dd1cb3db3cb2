"""mobilebert: BERT with bottleneck blocks and stacked feed-forward layers."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport, TEXT_ENCODER_FEATURES


class MobileBertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "mobilebert",
    MobileBertOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
