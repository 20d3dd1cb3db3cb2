"""big-bird: BERT with block-sparse attention; no token types in the graph.

Block-sparse attention needs sequences of many blocks; on short ones transformers falls back to
full attention, which is what the graph then holds (the fixture is configured with it).
"""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import CAUSAL_TEXT_ENCODER_FEATURES, ModelSupport


class BigBirdOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "big-bird",
    BigBirdOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
)
