"""roformer: BERT with rotary position embeddings."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class RoFormerOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "roformer",
    RoFormerOnnxConfig,
    features=("default", "masked-lm", "causal-lm", "sequence-classification", "token-classification", "multiple-choice", "question-answering"),
    tensorflow=True,
)
