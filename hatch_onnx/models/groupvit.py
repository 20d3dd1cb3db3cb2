"""groupvit: a dual encoder whose vision tower groups patches into segments (hard assignment)."""

from __future__ import annotations

from hatch_onnx.models._base import DualEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class GroupViTOnnxConfig(DualEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport("groupvit", GroupViTOnnxConfig, features=("default",), tensorflow=True)
