"""albert: default, masked-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TEXT_ENCODER_FEATURES, TextEncoderOnnxConfig


class AlbertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "albert",
    AlbertOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
