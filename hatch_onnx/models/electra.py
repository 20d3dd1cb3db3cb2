"""electra: default, masked-lm, causal-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import CAUSAL_TEXT_ENCODER_FEATURES, ModelSupport, TEXT_ENCODER_FEATURES


class ElectraOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "electra",
    ElectraOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
    tensorflow=TEXT_ENCODER_FEATURES,
)
