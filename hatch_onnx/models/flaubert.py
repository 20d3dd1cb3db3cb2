"""flaubert: XLM's architecture; no token types in the graph."""

from __future__ import annotations

from hatch_onnx.models._base import CAUSAL_TEXT_ENCODER_FEATURES, ModelSupport, TextEncoderOnnxConfig


class FlaubertOnnxConfig(TextEncoderOnnxConfig):
    USES_TOKEN_TYPE_IDS = False


SUPPORT = ModelSupport(
    "flaubert",
    FlaubertOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
    # transformers 4.57 maps multiple-choice to TFFlaubertForMultipleChoice, which cannot be built: its head reads
    # config.initializer_range, which FlaubertConfig does not have (AttributeError).
    tensorflow=("default", "masked-lm", "sequence-classification", "token-classification", "question-answering"),
    unavailable={"causal-lm": "transformers maps no causal-LM class to Flaubert (AutoModelForCausalLM refuses FlaubertConfig)"},
)
