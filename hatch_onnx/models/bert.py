"""bert: default, masked-lm, causal-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import CAUSAL_TEXT_ENCODER_FEATURES, ModelSupport


class BertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "bert",
    BertOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
