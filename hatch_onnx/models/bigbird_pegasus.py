"""bigbird-pegasus: BART's layout (see bart) with a block-sparse encoder.

On sequences shorter than its blocks transformers runs full attention, which is what the graph
then holds (the fixture is configured with it).
"""

from __future__ import annotations

from hatch_onnx.models._support import ModelSupport
from hatch_onnx.models.bart import BartOnnxConfig


class BigBirdPegasusOnnxConfig(BartOnnxConfig):
    pass


SUPPORT = ModelSupport(
    "bigbird-pegasus",
    BigBirdPegasusOnnxConfig,
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "seq2seq-lm", "seq2seq-lm-with-past", "sequence-classification", "question-answering"),
)
