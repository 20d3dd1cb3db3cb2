"""longformer: sliding-window attention plus a ``global_attention_mask`` input.

NOT REGISTERED YET (not in ``_MODULES``): with the chunking patched, validation at a padded
length other than the export's still differs (about 1e-2): another step of the sliding-window
attention keeps the export's chunk count. Unpatched, 4.57 validates only when both lengths pad
to the same multiple of the window, which hides the frozen count; 5.x cannot export at all.

The model is put in its ONNX mode (``config.onnx_export``: chunking without strided views).
The traced graph fixes how many tokens per sequence attend globally (the tracer records that
count as a constant): it is one, the first token, as for classification and the CLS-style use of
the other heads; batch and sequence stay dynamic. (The legacy exporter made every other token
global and validated at its export shape only, which hid that the count was frozen.) The model
pads sequences to a multiple of its attention window in a Python branch: the export's dummy
length is not a multiple of the window, so that the padding path is what the graph records (it
is exact with no padding too), and validation's padded length differs from the export's. Its
overlapping chunks are cut by a Python loop (4.57) or ``unfold`` (5.x, no ONNX symbolic for a
traced length): both are patched to one gather whose chunk count follows the sequence.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig
from hatch_onnx.onnx.config import PatchingSpec


def _chunk_by_gather(hidden_states, window_overlap, onnx_export: bool = False):
    """(batch, seq, dim) -> (batch, seq // w - 1, 2w, dim): chunks of 2w overlapping by w."""
    import torch

    count = torch.div(hidden_states.size(1), window_overlap, rounding_mode="trunc") - 1
    starts = torch.arange(count, device=hidden_states.device) * window_overlap
    index = starts[:, None] + torch.arange(2 * window_overlap, device=hidden_states.device)[None, :]
    return hidden_states[:, index]


class LongformerOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False
    ATOL_FOR_VALIDATION = 1e-4

    def __init__(self, config, task: str = "default", patching_specs=None):
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

        chunk = PatchingSpec(LongformerSelfAttention, "_chunk", staticmethod(_chunk_by_gather), orig_op=LongformerSelfAttention.__dict__["_chunk"])
        super().__init__(config, task=task, patching_specs=[chunk, *(patching_specs or [])])

    @property
    def default_sequence_length(self) -> int:
        window = self._config.attention_window
        window = max(window) if isinstance(window, (list, tuple)) else int(window)
        return window * max(super().default_sequence_length // window, 1) + 2

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
        mask[..., 0] = 1  # one global token per sequence: see the module's docstring
        arrays["global_attention_mask"] = mask
        return arrays


SUPPORT = ModelSupport(
    "longformer",
    LongformerOnnxConfig,
    features=("default", "masked-lm", "multiple-choice", "question-answering", "sequence-classification", "token-classification"),
)
