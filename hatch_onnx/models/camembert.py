"""camembert: RoBERTa's architecture; no token types in the graph."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import CAUSAL_TEXT_ENCODER_FEATURES, ModelSupport


class CamembertOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "camembert",
    CamembertOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
