"""m2m-100: an encoder-decoder with sinusoidal positions."""

from __future__ import annotations

from hatch_onnx.models._base import Seq2SeqOnnxConfig
from hatch_onnx.models._support import ModelSupport


class M2M100OnnxConfig(Seq2SeqOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "m2m-100",
    M2M100OnnxConfig,
    features=("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past"),
)
