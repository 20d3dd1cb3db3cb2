"""phi3: fused query/key/value and gate/up projections; otherwise a Llama."""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import DECODER_FEATURES, ModelSupport


class Phi3OnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport("phi3", Phi3OnnxConfig, features=DECODER_FEATURES)
