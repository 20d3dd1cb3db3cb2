"""mt5: T5's architecture (gated feed-forward, untied head)."""

from __future__ import annotations

from hatch_onnx.models._base import Seq2SeqOnnxConfig
from hatch_onnx.models._support import ModelSupport


class MT5OnnxConfig(Seq2SeqOnnxConfig):
    ATOL_FOR_VALIDATION = 5e-4


SUPPORT = ModelSupport(
    "mt5",
    MT5OnnxConfig,
    features=("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past"),
    tensorflow=True,
)
