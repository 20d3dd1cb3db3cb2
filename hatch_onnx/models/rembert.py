"""rembert: BERT with decoupled input and output embeddings."""

from __future__ import annotations

from hatch_onnx.models._base import CAUSAL_TEXT_ENCODER_FEATURES, ModelSupport, TextEncoderOnnxConfig


class RemBertOnnxConfig(TextEncoderOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "rembert",
    RemBertOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
