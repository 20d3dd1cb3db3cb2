"""layoutlmv3: token ids with a box per token, plus the page image as patches (fixed size)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from hatch_onnx.models._support import ModelSupport
from hatch_onnx.models.layoutlm import random_boxes
from hatch_onnx.config import OnnxConfig


class LayoutLMv3OnnxConfig(OnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        text = {0: "batch", 1: "sequence"}
        return OrderedDict(
            input_ids=dict(text), bbox=dict(text), attention_mask=dict(text), pixel_values={0: "batch", 1: "num_channels"}
        )

    def _image_size(self, height: int, width: int) -> tuple[int, int]:
        return int(self._config.input_size), int(self._config.input_size)

    def _dummy_text(self, preprocessor, draw):
        arrays = super()._dummy_text(preprocessor, draw)
        arrays["bbox"] = random_boxes(draw.rng, arrays["input_ids"].shape, int(self._config.max_2d_position_embeddings))
        arrays["pixel_values"] = self._dummy_vision(None, draw, 3, 0, 0)["pixel_values"]
        return arrays


SUPPORT = ModelSupport(
    "layoutlmv3",
    LayoutLMv3OnnxConfig,
    features=("default", "question-answering", "sequence-classification", "token-classification"),
    tensorflow=True,
)
