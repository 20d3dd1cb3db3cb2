"""mistral: a Llama with sliding-window attention (the window is part of the exported mask)."""

from __future__ import annotations

from hatch_onnx.models._base import DECODER_FEATURES, ModelSupport, RotaryDecoderOnnxConfig


class MistralOnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport("mistral", MistralOnnxConfig, features=DECODER_FEATURES)
