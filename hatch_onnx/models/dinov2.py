"""dinov2: a ViT whose position embeddings are interpolated to the image (bicubic): height and width are dynamic.

``last_hidden_state`` is already layer-normed: the pooled output is its first (CLS) token, not an output of its own.
"""

from __future__ import annotations

from hatch_onnx.models._base import VisionOnnxConfig
from hatch_onnx.models._support import ModelSupport


class Dinov2OnnxConfig(VisionOnnxConfig):
    pass


SUPPORT = ModelSupport("dinov2", Dinov2OnnxConfig, features=("default", "image-classification"))
