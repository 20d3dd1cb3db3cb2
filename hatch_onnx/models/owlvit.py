"""owlvit: CLIP's dual encoder as trained for open-vocabulary detection; default exports the dual encoder."""

from __future__ import annotations

from hatch_onnx.models._base import DualEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class OwlViTOnnxConfig(DualEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport("owlvit", OwlViTOnnxConfig, features=("default",))
