"""convbert: BERT with span-based dynamic convolution heads mixed into attention."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TEXT_ENCODER_FEATURES, TextEncoderOnnxConfig


class ConvBertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "convbert",
    ConvBertOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
