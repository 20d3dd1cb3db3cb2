"""vit: patches of a fixed-size image."""

from __future__ import annotations

from hatch_onnx.models._base import VisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class ViTOnnxConfig(VisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "vit",
    ViTOnnxConfig,
    features=("default", "image-classification", "masked-im"),
    tensorflow=("default", "image-classification"),
)
