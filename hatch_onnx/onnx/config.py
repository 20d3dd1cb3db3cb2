"""``transformers.onnx.config``'s names: the config family lives in :mod:`hatch_onnx.config`."""

from hatch_onnx.config import (  # noqa: F401 - re-exported for code written against transformers.onnx
    DEFAULT_ONNX_OPSET,
    OnnxConfig,
    OnnxConfigWithPast,
    OnnxSeq2SeqConfigWithPast,
    PatchingSpec,
)

__all__ = ["DEFAULT_ONNX_OPSET", "OnnxConfig", "OnnxConfigWithPast", "OnnxSeq2SeqConfigWithPast", "PatchingSpec"]
