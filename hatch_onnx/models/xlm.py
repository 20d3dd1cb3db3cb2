"""xlm: token ids, attention mask and token types (XLM's language embeddings stay out of the graph)."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import CAUSAL_TEXT_ENCODER_FEATURES, ModelSupport


class XLMOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "xlm",
    XLMOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
    tensorflow=True,
)
