"""mistral: a Llama with sliding-window attention (the window is part of the exported mask)."""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import DECODER_FEATURES, ModelSupport


class MistralOnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport("mistral", MistralOnnxConfig, features=DECODER_FEATURES)
