"""olmo2: normalised queries and keys, norms after attention and MLP."""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class Olmo2OnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "olmo2",
    Olmo2OnnxConfig,
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "sequence-classification"),
    unavailable_on_transformers4={"sequence-classification": "Olmo2ForSequenceClassification arrived in transformers 5"},
)
