"""levit: a convolution-attention hybrid with attention biases per resolution (fixed image size)."""

from __future__ import annotations

from hatch_onnx.models._base import VisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class LevitOnnxConfig(VisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "levit",
    LevitOnnxConfig,
    features=("default", "image-classification"),
)
