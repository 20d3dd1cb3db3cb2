"""flaubert: XLM's architecture; no token types in the graph."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import CAUSAL_TEXT_ENCODER_FEATURES, TEXT_ENCODER_FEATURES, ModelSupport


class FlaubertOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "flaubert",
    FlaubertOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
    tensorflow=TEXT_ENCODER_FEATURES,  # all but causal-lm (below)
    unavailable={"causal-lm": "transformers maps no causal-LM class to Flaubert (AutoModelForCausalLM refuses FlaubertConfig)"},
)
