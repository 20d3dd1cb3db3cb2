"""gemma3-text: Gemma 3's text model (``Gemma3ForCausalLM`` checkpoints, model type ``gemma3_text``).

Sliding-window layers with their own rotary base among global ones. The multimodal ``gemma3``
type (image and text in one checkpoint) is not this one.
"""

from __future__ import annotations

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class Gemma3TextOnnxConfig(RotaryDecoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "gemma3-text",
    Gemma3TextOnnxConfig,
    # transformers has no token-classification head for Gemma 3
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "sequence-classification"),
)
