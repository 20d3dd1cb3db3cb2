"""mobilebert: BERT with bottleneck blocks and stacked feed-forward layers."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class MobileBertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "mobilebert",
    MobileBertOnnxConfig,
    features=("default", "masked-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
    tensorflow=True,
)
