"""xlm: token ids, attention mask and token types (XLM's language embeddings stay out of the graph)."""

from __future__ import annotations

from hatch_onnx.models._base import ModelSupport, TextEncoderOnnxConfig


class XLMOnnxConfig(TextEncoderOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "xlm",
    XLMOnnxConfig,
    features=("default", "masked-lm", "causal-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering"),
)
