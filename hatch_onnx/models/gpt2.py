"""gpt2: a decoder with a key/value cache."""

from __future__ import annotations

from hatch_onnx.models._base import DecoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class GPT2OnnxConfig(DecoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "gpt2",
    GPT2OnnxConfig,
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "sequence-classification", "token-classification"),
    tensorflow=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "sequence-classification"),
)
