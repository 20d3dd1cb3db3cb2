"""camembert: RoBERTa's architecture; no token types in the graph."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class CamembertOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "camembert",
    CamembertOnnxConfig,
    features=("default", "masked-lm", "causal-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
    tensorflow=True,
)
