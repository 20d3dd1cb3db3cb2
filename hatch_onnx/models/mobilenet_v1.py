"""mobilenet-v1: depthwise-separable convolutions; only the batch axis is dynamic (TF-style padding)."""

from __future__ import annotations

from hatch_onnx.models._base import ConvVisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class MobileNetV1OnnxConfig(ConvVisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4
    DYNAMIC_IMAGE_AXES = False


SUPPORT = ModelSupport(
    "mobilenet-v1",
    MobileNetV1OnnxConfig,
    features=("default", "image-classification"),
)
