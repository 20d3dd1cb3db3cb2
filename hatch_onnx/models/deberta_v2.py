"""deberta-v2: default, masked-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport, TEXT_ENCODER_FEATURES


class DebertaV2OnnxConfig(TextEncoderOnnxConfig):
    # DeBERTa's disentangled attention needs opset 12 ops; token types only when configured.
    DEFAULT_ONNX_OPSET = 14


SUPPORT = ModelSupport(
    "deberta-v2",
    DebertaV2OnnxConfig,
    features=TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
