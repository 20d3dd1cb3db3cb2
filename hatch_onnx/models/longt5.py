"""longt5: T5 with local (block) attention in the encoder."""

from __future__ import annotations

from hatch_onnx.models._base import Seq2SeqOnnxConfig
from hatch_onnx.models._support import ModelSupport


class LongT5OnnxConfig(Seq2SeqOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "longt5",
    LongT5OnnxConfig,
    features=("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past"),
)
