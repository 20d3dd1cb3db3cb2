"""segformer: a hierarchical encoder with an all-MLP decoder; semantic-segmentation gives per-pixel logits at a quarter of the resolution."""

from __future__ import annotations

from hatch_onnx.models._base import FeatureMapOnnxConfig
from hatch_onnx.models._support import ModelSupport


class SegformerOnnxConfig(FeatureMapOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "segformer",
    SegformerOnnxConfig,
    features=("default", "image-classification", "semantic-segmentation"),
    tensorflow=True,
)
