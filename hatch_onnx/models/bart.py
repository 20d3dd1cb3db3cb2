"""bart: an encoder-decoder; its causal-lm feature exports the decoder alone."""

from __future__ import annotations

from typing import Mapping

from hatch_onnx.config import OnnxConfigWithPast
from hatch_onnx.models._base import DecoderOnnxConfig, Seq2SeqOnnxConfig
from hatch_onnx.models._support import ModelSupport


class BartOnnxConfig(Seq2SeqOnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4
    APPEND_EOS = True  # the classification head reads the hidden state at the last eos
    # The causal-LM decoder (BartForCausalLM) takes no position_ids: its positions start at the cache's length.
    POSITION_IDS = False
    takes_position_ids = DecoderOnnxConfig.takes_position_ids

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        if self.task == "causal-lm":
            return DecoderOnnxConfig.inputs.fget(self)
        return super().inputs

    @property
    def outputs(self):
        if self.task == "causal-lm":
            return DecoderOnnxConfig.outputs.fget(self)
        return super().outputs

    def fill_with_past_key_values_(self, inputs_or_outputs, direction, inverted_values_shape=False):
        if self.task == "causal-lm":
            return DecoderOnnxConfig.fill_with_past_key_values_(self, inputs_or_outputs, direction, inverted_values_shape)
        return super().fill_with_past_key_values_(inputs_or_outputs, direction, inverted_values_shape)

    def _dummy_text(self, preprocessor, draw):
        if self.task == "causal-lm":
            return OnnxConfigWithPast._dummy_text(self, preprocessor, draw)  # GPT-2's layout, no positions
        return super()._dummy_text(preprocessor, draw)


SUPPORT = ModelSupport(
    "bart",
    BartOnnxConfig,
    features=("default", "default-with-past", "causal-lm", "causal-lm-with-past", "seq2seq-lm", "seq2seq-lm-with-past", "sequence-classification", "question-answering"),
    tensorflow=("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past", "sequence-classification"),
)
