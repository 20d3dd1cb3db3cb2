"""vision-encoder-decoder: an image encoder and a text decoder in one graph (image in, token logits out).

The legacy exporter wrote the encoder and the decoder as two graphs; here the feature's model,
``pixel_values`` and decoder ids to ``logits``, is one graph, validated end to end.

``vision2seq-lm-with-past``: that graph as one decoding step (the image encoded again, the
decoder's own cache in and out, ``past_key_values.{i}.key|value`` as a decoder-only model's:
cross-attention is recomputed from the image at every step, as transformers' GPT-2 decoder does),
and beside it the graph set generation needs (:mod:`hatch_onnx.graph_sets`): the image encoded
once, ``encoder_hidden_states`` into every decoding step.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

from hatch_onnx.config import OnnxConfigWithPast
from hatch_onnx.models._base import VISION_OUTPUTS
from hatch_onnx.models._support import ModelSupport


class VisionEncoderDecoderOnnxConfig(OnnxConfigWithPast):
    ATOL_FOR_VALIDATION = 1e-4
    _tasks_to_common_outputs = VISION_OUTPUTS

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        common: dict = OrderedDict(
            pixel_values={0: "batch", 1: "num_channels", 2: "height", 3: "width"},
            decoder_input_ids={0: "batch", 1: "decoder_sequence"},
            decoder_attention_mask={0: "batch", 1: "decoder_sequence"},
        )
        if self.use_past:
            common["decoder_attention_mask"] = {0: "batch", 1: "past_sequence + decoder_sequence"}
            self.fill_with_past_key_values_(common, direction="inputs")
        return common

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        common: dict = OrderedDict(logits={0: "batch", 1: "decoder_sequence"})
        if self.use_past:
            self.fill_with_past_key_values_(common, direction="outputs")
        return common

    @property
    def values_override(self):
        return None  # the decoder's config holds use_cache; the graphs ask for the cache explicitly

    # The cache is the decoder's: its layers, heads and width.
    @property
    def num_layers(self) -> int:
        return int(self._config.decoder.num_hidden_layers)

    @property
    def num_attention_heads(self) -> int:
        return int(self._config.decoder.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(self._config.decoder.hidden_size) // self.num_attention_heads

    @property
    def _text_config(self) -> Any:
        return self._config.decoder

    def _image_size(self, height: int, width: int) -> tuple[int, int]:
        size = self._config.encoder.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def _dummy_text(self, preprocessor, draw):
        import numpy as np

        batch, seq = draw.batch, draw.sequence
        decoder = self._config.decoder
        special = {getattr(decoder, name, None) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
        allowed = np.array([i for i in range(int(decoder.vocab_size)) if i not in special], dtype=np.int64)
        arrays = {
            "pixel_values": self._dummy_vision(None, draw, 3, 0, 0)["pixel_values"],
            "decoder_input_ids": draw.rng.choice(allowed, size=(batch, seq)).astype(np.int64),
        }
        past = draw.past if self.use_past else 0
        arrays["decoder_attention_mask"] = np.ones((batch, past + seq), dtype=np.int64)
        if self.use_past:
            for i in range(self.num_layers):
                for kind in ("key", "value"):
                    arrays[f"past_key_values.{i}.{kind}"] = draw.rng.standard_normal(self._past_shape(batch, past), dtype=np.float32)
        return arrays


SUPPORT = ModelSupport("vision-encoder-decoder", VisionEncoderDecoderOnnxConfig, features=("vision2seq-lm", "vision2seq-lm-with-past"),
                       tensorflow=("vision2seq-lm",))
