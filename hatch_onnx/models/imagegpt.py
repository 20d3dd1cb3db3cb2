"""imagegpt: a GPT-2 over colour-cluster ids: images come in as ``input_ids`` (one per pixel).

Exported with its cache on: transformers 4.57's ImageGPT cannot compute positions without one
(``past_length`` is None); the cache it builds is not a graph output. transformers scales
attention by ``torch_float(sqrt(head_dim))``, which is a tensor when traced but, when run, a
Python number (truncated to an int on 4.57): the export is patched to give the number the run
gives on each line, so the graph computes what the model does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from hatch_onnx.models._support import ModelSupport
from hatch_onnx.config import OnnxConfig, PatchingSpec


def _eager_torch_float(x):
    from transformers.utils import torch_float  # transformers' own, given a number: as when not tracing

    return torch_float(x.item() if hasattr(x, "item") else x)


class ImageGPTOnnxConfig(OnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4

    def __init__(self, config, task: str = "default", patching_specs=None):
        from transformers.models.imagegpt import modeling_imagegpt

        specs = [PatchingSpec(modeling_imagegpt, "torch_float", _eager_torch_float), *(patching_specs or [])]
        super().__init__(config, task=task, patching_specs=specs)

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        return OrderedDict({"input_ids": {0: "batch", 1: "sequence"}})

    @property
    def values_override(self):
        return {"use_cache": True}


SUPPORT = ModelSupport(
    "imagegpt",
    ImageGPTOnnxConfig,
    features=("default", "image-classification"),
)
