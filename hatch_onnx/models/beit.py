"""beit: ViT with relative position biases."""

from __future__ import annotations

from hatch_onnx.models._base import VisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class BeitOnnxConfig(VisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "beit",
    BeitOnnxConfig,
    features=("default", "image-classification"),
)
