"""deit: ViT with a distillation token."""

from __future__ import annotations

from hatch_onnx.models._base import VisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class DeiTOnnxConfig(VisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "deit",
    DeiTOnnxConfig,
    features=("default", "image-classification"),
    tensorflow=True,
)
