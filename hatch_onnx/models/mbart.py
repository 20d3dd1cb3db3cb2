"""mbart: BART's layout (see bart) with pre-layer-norm blocks."""

from __future__ import annotations

from hatch_onnx.models._support import ModelSupport
from hatch_onnx.models.bart import BartOnnxConfig


class MBartOnnxConfig(BartOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "mbart",
    MBartOnnxConfig,
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "seq2seq-lm", "seq2seq-lm-with-past", "sequence-classification", "question-answering"),
    tensorflow=("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past"),
)
