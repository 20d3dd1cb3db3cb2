"""blenderbot: BART's layout (see bart) with pre-layer-norm blocks."""

from __future__ import annotations

from hatch_onnx.models._support import ModelSupport
from hatch_onnx.models.bart import BartOnnxConfig


class BlenderbotOnnxConfig(BartOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "blenderbot",
    BlenderbotOnnxConfig,
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "seq2seq-lm", "seq2seq-lm-with-past"),
    tensorflow=("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past"),
)
