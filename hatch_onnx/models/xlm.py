"""xlm: token ids, attention mask and token types (XLM's language embeddings stay out of the graph)."""

from __future__ import annotations

from hatch_onnx.models._base import CAUSAL_TEXT_ENCODER_FEATURES, ModelSupport, TextEncoderOnnxConfig


class XLMOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "xlm",
    XLMOnnxConfig,
    features=CAUSAL_TEXT_ENCODER_FEATURES,
    # transformers 4.57 maps multiple-choice to TFXLMForMultipleChoice, which cannot be built: its head reads
    # config.initializer_range, which XLMConfig does not have (AttributeError).
    tensorflow=("default", "masked-lm", "causal-lm", "sequence-classification", "token-classification", "question-answering"),
)
