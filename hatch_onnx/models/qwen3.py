"""qwen3: normalised queries and keys, and a head size of its own (``head_dim``)."""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import DECODER_FEATURES, ModelSupport


class Qwen3OnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport("qwen3", Qwen3OnnxConfig, features=DECODER_FEATURES)
