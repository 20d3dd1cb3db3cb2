"""convbert: BERT with span-based dynamic convolution heads mixed into attention."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class ConvBertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "convbert",
    ConvBertOnnxConfig,
    features=("default", "masked-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
    tensorflow=True,
)
