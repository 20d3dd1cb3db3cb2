"""albert: default, masked-lm, sequence-classification, multiple-choice, token-classification, question-answering."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class AlbertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "albert",
    AlbertOnnxConfig,
    features=("default", "masked-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
    tensorflow=True,
)
