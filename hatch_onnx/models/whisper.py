"""whisper: speech encoder, text decoder."""

from __future__ import annotations

from hatch_onnx.models._base import SpeechSeq2SeqOnnxConfig
from hatch_onnx.models._support import ModelSupport


class WhisperOnnxConfig(SpeechSeq2SeqOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-3


SUPPORT = ModelSupport(
    "whisper",
    WhisperOnnxConfig,
    features=("default", "default-with-past", "speech2seq-lm", "speech2seq-lm-with-past"),
    tensorflow=True,
)
