"""deberta: disentangled attention; token types only when the config has them."""

from __future__ import annotations

from hatch_onnx.models._base import TextEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class DebertaOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "deberta",
    DebertaOnnxConfig,
    features=("default", "masked-lm", "sequence-classification", "token-classification", "question-answering"),
    tensorflow=True,
)
