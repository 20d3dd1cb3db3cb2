"""t5: an encoder-decoder with relative position buckets."""

from __future__ import annotations

from hatch_onnx.models._base import Seq2SeqOnnxConfig
from hatch_onnx.models._support import ModelSupport


class T5OnnxConfig(Seq2SeqOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "t5",
    T5OnnxConfig,
    features=("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past"),
    tensorflow=True,
)
