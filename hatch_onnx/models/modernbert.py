"""modernbert: default, masked-lm, sequence-classification, token-classification; no token types.

Layers alternate global attention and local attention over a sliding window, both with rotary
positions. The loader's eager attention keeps the padded path: no unpadding (flash attention only).
"""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class ModernBertOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "modernbert",
    ModernBertOnnxConfig,
    features=("default", "masked-lm", "sequence-classification", "token-classification"),
)
