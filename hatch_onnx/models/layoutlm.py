"""layoutlm: BERT plus one bounding box per token (``bbox``, four coordinates on a 0-1000 page)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class LayoutLMOnnxConfig(TextEncoderOnnxConfig):
    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        common = super().inputs
        ordered = OrderedDict(input_ids=common["input_ids"], bbox=dict(common["input_ids"]))
        ordered.update((name, axes) for name, axes in common.items() if name != "input_ids")
        return ordered

    def _dummy_text(self, preprocessor, draw):
        arrays = super()._dummy_text(preprocessor, draw)
        arrays["bbox"] = random_boxes(draw.rng, arrays["input_ids"].shape, int(self._config.max_2d_position_embeddings))
        return arrays


def random_boxes(rng, shape, limit: int):
    """``shape + (4,)`` boxes ``(x0, y0, x1, y1)`` with ``x0 <= x1 < limit`` and ``y0 <= y1 < limit``."""
    import numpy as np

    corners = rng.integers(0, limit, size=(*shape, 2, 2))
    corners.sort(axis=-2)  # per coordinate, the smaller first: (x0, y0), then (x1, y1)
    return corners.reshape(*shape, 4).astype(np.int64)


SUPPORT = ModelSupport(
    "layoutlm",
    LayoutLMOnnxConfig,
    features=("default", "masked-lm", "sequence-classification", "token-classification"),
    tensorflow=True,
)
