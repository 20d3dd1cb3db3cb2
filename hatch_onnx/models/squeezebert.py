"""squeezebert: BERT whose projections are grouped 1x1 convolutions."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class SqueezeBertOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "squeezebert",
    SqueezeBertOnnxConfig,
    features=("default", "masked-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
)
