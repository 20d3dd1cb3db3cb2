"""gpt-neo: a decoder with local and global attention layers."""

from __future__ import annotations

from hatch_onnx.models._base import DecoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class GPTNeoOnnxConfig(DecoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "gpt-neo",
    GPTNeoOnnxConfig,
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "sequence-classification"),
)
