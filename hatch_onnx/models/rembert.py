"""rembert: BERT with decoupled input and output embeddings."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class RemBertOnnxConfig(TextEncoderOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "rembert",
    RemBertOnnxConfig,
    features=("default", "masked-lm", "causal-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
    tensorflow=True,
)
