"""perceiver: one ``inputs`` tensor, bytes or pixels by feature, cross-attended into a latent array.

masked-lm decodes one position per ``max_position_embeddings`` whatever the input's length.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from hatch_onnx.models._support import ModelSupport
from hatch_onnx.config import OnnxConfig


class PerceiverOnnxConfig(OnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4

    @property
    def MODALITY(self) -> str:  # noqa: N802 - the base class reads it as a setting
        return "vision" if self.task == "image-classification" else "text"

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        if self.task == "image-classification":
            return OrderedDict(inputs={0: "batch", 1: "num_channels", 2: "height", 3: "width"})
        return OrderedDict(inputs={0: "batch", 1: "sequence"}, attention_mask={0: "batch", 1: "sequence"})

    def _dummy_text(self, preprocessor, draw):
        arrays = super()._dummy_text(preprocessor, draw)
        arrays["inputs"] = arrays.pop("input_ids")
        return arrays

    def _dummy_vision(self, preprocessor, draw, num_channels, height, width):
        arrays = super()._dummy_vision(preprocessor, draw, num_channels, height, width)
        return {"inputs": arrays.pop("pixel_values")}


SUPPORT = ModelSupport(
    "perceiver",
    PerceiverOnnxConfig,
    features=("image-classification", "masked-lm", "sequence-classification"),
)
