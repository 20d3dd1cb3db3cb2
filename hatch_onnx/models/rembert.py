"""rembert: BERT with decoupled input and output embeddings."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import CAUSAL_TEXT_ENCODER_FEATURES, ModelSupport


class RemBertOnnxConfig(TextEncoderOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "rembert",
    RemBertOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
