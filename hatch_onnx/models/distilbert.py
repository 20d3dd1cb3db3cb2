"""distilbert: default, masked-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport, TEXT_ENCODER_FEATURES


class DistilBertOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "distilbert",
    DistilBertOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
