"""data2vec-vision: BEiT's architecture trained by data2vec."""

from __future__ import annotations

from hatch_onnx.models._base import VisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class Data2VecVisionOnnxConfig(VisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "data2vec-vision",
    Data2VecVisionOnnxConfig,
    features=("default", "image-classification"),
    tensorflow=True,
)
