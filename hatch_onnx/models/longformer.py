"""longformer: sliding-window attention plus a ``global_attention_mask`` input.

The model is put in its ONNX mode (``config.onnx_export``: chunking without strided views).
Every other token attends globally in the dummy inputs, as in the legacy exporter. The model
pads sequences to a multiple of its attention window in a Python branch: the export's dummy
length is one more than a multiple of the window, so that the padding path is what the graph
records (it is exact with no padding too; validation runs such a length).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class LongformerOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False
    ATOL_FOR_VALIDATION = 1e-4

    @property
    def default_sequence_length(self) -> int:
        window = self._config.attention_window
        window = max(window) if isinstance(window, (list, tuple)) else int(window)
        return window * max(super().default_sequence_length // window, 1) + 1

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        common = super().inputs
        common["global_attention_mask"] = dict(common["input_ids"])
        return common

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        common = super().outputs
        if self.task == "default":
            common["pooler_output"] = {0: "batch"}
        return common

    @property
    def values_override(self):
        return {**(super().values_override or {}), "onnx_export": True}

    def _dummy_text(self, preprocessor, rng, batch, seq, choices, is_pair):
        import numpy as np

        arrays = super()._dummy_text(preprocessor, rng, batch, seq, choices, is_pair)
        mask = np.zeros_like(arrays["input_ids"])
        mask[..., ::2] = 1
        arrays["global_attention_mask"] = mask
        return arrays


SUPPORT = ModelSupport(
    "longformer",
    LongformerOnnxConfig,
    features=("default", "masked-lm", "multiple-choice", "question-answering", "sequence-classification", "token-classification"),
    tensorflow=True,
)
