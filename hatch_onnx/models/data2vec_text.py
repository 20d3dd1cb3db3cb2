"""data2vec-text: RoBERTa's architecture trained by data2vec; no token types in the graph."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport, TEXT_ENCODER_FEATURES


class Data2VecTextOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "data2vec-text",
    Data2VecTextOnnxConfig,
    features=TEXT_ENCODER_FEATURES,
)
