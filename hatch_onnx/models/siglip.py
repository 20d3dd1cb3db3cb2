"""siglip: CLIP's dual encoder with a sigmoid loss; its text tower takes no mask (see DualEncoderOnnxConfig).

SigLIP was trained on ids padded to a fixed length with every token attended, and its
checkpoints' tokenizers return ``input_ids`` alone (Optimum's graph takes no mask either), so the
default graph is ``input_ids`` and ``pixel_values`` in. image-classification is the vision tower
with a classifier on the mean of its patches.
"""

from __future__ import annotations

from hatch_onnx.models._base import DualEncoderOnnxConfig
from hatch_onnx.models._support import ModelSupport


class SiglipOnnxConfig(DualEncoderOnnxConfig):
    TEXT_MASK = False
    ATOL_FOR_VALIDATION = 1e-5  # outputs within 3e-7 (the family's 1e-4 is CLIP's)


SUPPORT = ModelSupport("siglip", SiglipOnnxConfig, features=("default", "image-classification"))
