"""yolos: ViT with detection tokens; object-detection gives class logits and boxes per detection token."""

from __future__ import annotations

from hatch_onnx.models._base import VisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class YolosOnnxConfig(VisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "yolos",
    YolosOnnxConfig,
    features=("default", "object-detection"),
)
