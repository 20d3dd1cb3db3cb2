"""convbert: BERT with span-based dynamic convolution heads mixed into attention."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport, TEXT_ENCODER_FEATURES


class ConvBertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "convbert",
    ConvBertOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
