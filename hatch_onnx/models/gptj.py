"""gptj: a decoder with rotary positions and parallel attention / MLP blocks."""

from __future__ import annotations

from hatch_onnx.models._base import DecoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class GPTJOnnxConfig(DecoderOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "gptj",
    GPTJOnnxConfig,
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "question-answering", "sequence-classification"),
    tensorflow=True,
)
