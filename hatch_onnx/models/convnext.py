"""convnext: a convolutional backbone."""

from __future__ import annotations

from hatch_onnx.models._base import ConvVisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class ConvNextOnnxConfig(ConvVisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "convnext",
    ConvNextOnnxConfig,
    features=("default", "image-classification"),
    tensorflow=True,
)
