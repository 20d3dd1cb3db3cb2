"""detr: a CNN backbone and an encoder-decoder over object queries; the image comes with a ``pixel_mask``.

object-detection gives class logits and boxes per query; image-segmentation adds a mask per query.
"""

from __future__ import annotations

from typing import Mapping

from hatch_onnx.models._base import VisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class DetrOnnxConfig(VisionOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        common = super().inputs
        common["pixel_mask"] = {0: "batch"}
        return common

    def _dummy_vision(self, preprocessor, draw, num_channels, height, width):
        import numpy as np

        arrays = super()._dummy_vision(preprocessor, draw, num_channels, height, width)
        batch, _, height, width = arrays["pixel_values"].shape
        mask = np.ones((batch, height, width), dtype=np.int64)
        mask[0, :, width - width // 4 :] = 0  # one image padded on the right: the mask is really read
        arrays["pixel_mask"] = mask
        return arrays


SUPPORT = ModelSupport(
    "detr",
    DetrOnnxConfig,
    features=("default", "object-detection", "image-segmentation"),
)
