"""longformer: sliding-window attention plus a ``global_attention_mask`` input.

The model is put in its ONNX mode (``config.onnx_export``: chunking without strided views).
The traced graph fixes how many tokens per sequence attend globally (the tracer records that
count as a constant): it is one, the first token, as for classification and the CLS-style use of
the other heads; batch and sequence stay dynamic. (The legacy exporter made every other token
global and validated at its export shape only, which hid that the count was frozen.) The model
pads sequences to a multiple of its attention window in a Python branch: the export's dummy
length is not a multiple of the window, so that the padding path is what the graph records (it
is exact with no padding too), and validation's padded length is another multiple than the
export's. The sliding-window attention cuts overlapping chunks twice: the query and key chunks
by a Python loop (4.57) or ``unfold`` (5.x, no ONNX symbolic for a traced length), the value
chunks by ``as_strided``, whose traced sizes are constants (the export's chunk count). All are
patched to one gather whose chunk count follows the sequence, on both lines.
"""

from __future__ import annotations

from typing import Mapping

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport
from hatch_onnx.config import PatchingSpec


def _chunks_of(tensor, window_overlap: int, size: int):
    """(batch, seq, dim) -> (batch, chunks, size, dim): chunks of ``size`` tokens starting every
    ``window_overlap``, as many as fit, by one gather whose count follows the sequence."""
    import torch

    count = torch.div(tensor.size(1) - size, window_overlap, rounding_mode="trunc") + 1
    starts = torch.arange(count, device=tensor.device) * window_overlap
    return tensor[:, starts[:, None] + torch.arange(size, device=tensor.device)[None, :]]


def _chunk_by_gather(hidden_states, window_overlap, onnx_export: bool = False):
    """(batch, seq, dim) -> (batch, seq // w - 1, 2w, dim): chunks of 2w overlapping by w."""
    return _chunks_of(hidden_states, window_overlap, 2 * window_overlap)


def _sliding_chunks_matmul_attn_probs_value(self, attn_probs, value, window_overlap: int):
    """transformers' own, with the value chunks cut by a gather instead of ``as_strided``, whose
    traced sizes (the chunk count) are constants."""
    import torch

    batch_size, seq_len, num_heads, head_dim = value.size()
    chunked_attn_probs = attn_probs.transpose(1, 2).reshape(
        batch_size * num_heads, torch.div(seq_len, window_overlap, rounding_mode="trunc"), window_overlap, 2 * window_overlap + 1
    )
    value = value.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)
    # w padding at both ends, then chunks of 3w starting every w (the original's strided view)
    padded_value = torch.nn.functional.pad(value, (0, 0, window_overlap, window_overlap), value=-1)
    chunked_value = _chunks_of(padded_value, window_overlap, 3 * window_overlap)
    chunked_attn_probs = self._pad_and_diagonalize(chunked_attn_probs)
    context = torch.einsum("bcwd,bcdh->bcwh", (chunked_attn_probs, chunked_value))
    return context.view(batch_size, num_heads, seq_len, head_dim).transpose(1, 2)


def _attention_patches() -> list:
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    own = LongformerSelfAttention.__dict__
    values = "_sliding_chunks_matmul_attn_probs_value"
    return [
        PatchingSpec(LongformerSelfAttention, "_chunk", staticmethod(_chunk_by_gather), orig_op=own["_chunk"]),
        PatchingSpec(LongformerSelfAttention, values, _sliding_chunks_matmul_attn_probs_value, orig_op=own[values]),
    ]


class LongformerOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False
    ATOL_FOR_VALIDATION = 1e-4

    def patch_ops(self) -> None:
        # The patches are PyTorch's, made on first use: a TensorFlow export never imports torch.
        if not getattr(self, "_attention_patches_added", False):
            self._patching_specs[:0] = _attention_patches()
            self._attention_patches_added = True
        super().patch_ops()

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

    def _dummy_text(self, preprocessor, draw):
        import numpy as np

        arrays = super()._dummy_text(preprocessor, draw)
        mask = np.zeros_like(arrays["input_ids"])
        mask[..., 0] = 1  # one global token per sequence: see the module's docstring
        arrays["global_attention_mask"] = mask
        return arrays


SUPPORT = ModelSupport(
    "longformer",
    LongformerOnnxConfig,
    features=("default", "masked-lm", "multiple-choice", "question-answering", "sequence-classification", "token-classification"),
    tensorflow=True,
)
