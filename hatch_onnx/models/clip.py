"""clip: a text tower and a vision tower in one embedding space (see DualEncoderOnnxConfig)."""

from __future__ import annotations

from hatch_onnx.models._base import DualEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class CLIPOnnxConfig(DualEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport("clip", CLIPOnnxConfig, features=("default",), tensorflow=True)
