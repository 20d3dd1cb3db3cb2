"""gemma2: alternating sliding-window and global layers, attention and logits soft-capped.

Soft-capping is computed by transformers' eager attention, which the loader always asks for
(its SDPA path would drop the cap); the graph caps as the model does.
"""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import DECODER_FEATURES, ModelSupport


class Gemma2OnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport("gemma2", Gemma2OnnxConfig, features=DECODER_FEATURES)
