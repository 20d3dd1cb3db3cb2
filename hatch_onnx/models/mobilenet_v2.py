"""mobilenet-v2: inverted residual blocks; only the batch axis is dynamic (TF-style padding)."""

from __future__ import annotations

from hatch_onnx.models._base import ConvVisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class MobileNetV2OnnxConfig(ConvVisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4
    DYNAMIC_IMAGE_AXES = False


SUPPORT = ModelSupport(
    "mobilenet-v2",
    MobileNetV2OnnxConfig,
    features=("default", "image-classification"),
)
