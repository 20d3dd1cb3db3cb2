"""granite: a Llama with scaled embeddings, residuals, attention and logits."""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class GraniteOnnxConfig(RotaryDecoderOnnxConfig):
    pass


# transformers has no classification heads for Granite
SUPPORT = ModelSupport("granite", GraniteOnnxConfig, features=("default", "default-with-past", "causal-lm", "causal-lm-with-past"))
