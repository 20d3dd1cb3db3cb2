"""albert: default, masked-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport, TEXT_ENCODER_FEATURES


class AlbertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "albert",
    AlbertOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
