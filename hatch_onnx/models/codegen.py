"""codegen: a decoder with rotary positions (the legacy list has no -with-past feature for it)."""

from __future__ import annotations

from hatch_onnx.models._base import DecoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class CodeGenOnnxConfig(DecoderOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4


SUPPORT = ModelSupport(
    "codegen",
    CodeGenOnnxConfig,
    features=("default", "causal-lm"),
)
