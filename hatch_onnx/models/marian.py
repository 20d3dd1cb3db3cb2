"""marian: BART's layout (see bart), sinusoidal positions; causal-lm exports the decoder alone."""

from __future__ import annotations

from hatch_onnx.models._support import ModelSupport
from hatch_onnx.models.bart import BartOnnxConfig


class MarianOnnxConfig(BartOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "marian",
    MarianOnnxConfig,
    features=("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past", "causal-lm", "causal-lm-with-past"),
    tensorflow=("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past"),
)
