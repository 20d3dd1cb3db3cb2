"""mobilevit: MobileNet blocks with transformer blocks over unfolded patches."""

from __future__ import annotations

from hatch_onnx.models._base import ConvVisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class MobileViTOnnxConfig(ConvVisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "mobilevit",
    MobileViTOnnxConfig,
    features=("default", "image-classification"),
    tensorflow=True,
)
