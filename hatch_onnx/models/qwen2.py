"""qwen2: a Llama with biases on the query, key and value projections."""

from __future__ import annotations

from hatch_onnx.models._base import DECODER_FEATURES, ModelSupport, RotaryDecoderOnnxConfig


class Qwen2OnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport("qwen2", Qwen2OnnxConfig, features=DECODER_FEATURES)
