"""electra: default, masked-lm, causal-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class ElectraOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "electra",
    ElectraOnnxConfig,
    features=("default", "masked-lm", "causal-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
    tensorflow=("default", "masked-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
)
