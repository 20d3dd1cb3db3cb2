"""ibert: RoBERTa with integer-only kernels (exported in float mode, quant_mode off)."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class IBertOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "ibert",
    IBertOnnxConfig,
    features=("default", "masked-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
)
