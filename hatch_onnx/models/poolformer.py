"""poolformer: a MetaFormer whose token mixer is average pooling."""

from __future__ import annotations

from hatch_onnx.models._base import FeatureMapOnnxConfig
from hatch_onnx.models._support import ModelSupport


class PoolFormerOnnxConfig(FeatureMapOnnxConfig):
    ATOL_FOR_VALIDATION = 2e-3


SUPPORT = ModelSupport(
    "poolformer",
    PoolFormerOnnxConfig,
    features=("default", "image-classification"),
)
