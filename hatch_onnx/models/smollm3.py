"""smollm3: a Llama whose every fourth layer has no rotary positions (``no_rope_layers``)."""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import DECODER_FEATURES, ModelSupport


class SmolLM3OnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport("smollm3", SmolLM3OnnxConfig, features=DECODER_FEATURES)
