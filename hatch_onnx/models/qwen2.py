"""qwen2: a Llama with biases on the query, key and value projections."""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import DECODER_FEATURES, ModelSupport


class Qwen2OnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport("qwen2", Qwen2OnnxConfig, features=DECODER_FEATURES)
