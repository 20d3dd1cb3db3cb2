"""resnet: a convolutional backbone."""

from __future__ import annotations

from hatch_onnx.models._base import ConvVisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class ResNetOnnxConfig(ConvVisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-3


SUPPORT = ModelSupport(
    "resnet",
    ResNetOnnxConfig,
    features=("default", "image-classification"),
    tensorflow=True,
)
