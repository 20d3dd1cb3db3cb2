"""flaubert: XLM's architecture; no token types in the graph."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class FlaubertOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "flaubert",
    FlaubertOnnxConfig,
    features=("default", "masked-lm", "causal-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
    unavailable={"causal-lm": "transformers maps no causal-LM class to Flaubert (AutoModelForCausalLM refuses FlaubertConfig)"},
)
