"""roberta: default, masked-lm, causal-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class RobertaOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "roberta",
    RobertaOnnxConfig,
    features=("default", "masked-lm", "causal-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
    tensorflow=True,
)
