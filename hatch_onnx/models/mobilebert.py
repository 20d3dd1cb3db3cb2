"""mobilebert: BERT with bottleneck blocks and stacked feed-forward layers."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TEXT_ENCODER_FEATURES, TextEncoderOnnxConfig


class MobileBertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "mobilebert",
    MobileBertOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
