"""swin: shifted-window attention over a patch hierarchy."""

from __future__ import annotations

from hatch_onnx.models._base import VisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class SwinOnnxConfig(VisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "swin",
    SwinOnnxConfig,
    features=("default", "image-classification"),
    tensorflow=True,
)
