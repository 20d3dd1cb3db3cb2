"""llama: the reference of today's decoders (rotary positions, grouped-query attention)."""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import DECODER_FEATURES, ModelSupport


class LlamaOnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport("llama", LlamaOnnxConfig, features=DECODER_FEATURES)
