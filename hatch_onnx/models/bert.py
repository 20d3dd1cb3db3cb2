"""bert: default, masked-lm, causal-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class BertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "bert",
    BertOnnxConfig,
    features=("default", "masked-lm", "causal-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
    tensorflow=True,
)
