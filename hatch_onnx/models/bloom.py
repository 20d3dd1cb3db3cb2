"""bloom: a decoder with ALiBi positions.

The legacy exporter laid BLOOM's cache out as (batch * heads, ...); transformers now keeps the
standard (batch, heads, sequence, head_dim) layout, and so do we.
"""

from __future__ import annotations

from hatch_onnx.models._base import DecoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class BloomOnnxConfig(DecoderOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4
    POSITION_IDS = False  # ALiBi: positions come from the mask


SUPPORT = ModelSupport(
    "bloom",
    BloomOnnxConfig,
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "sequence-classification", "token-classification"),
)
