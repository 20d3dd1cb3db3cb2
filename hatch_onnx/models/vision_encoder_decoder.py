"""vision-encoder-decoder: an image encoder and a text decoder in one graph (image in, token logits out).

The legacy exporter wrote the encoder and the decoder as two graphs; here the feature's model,
``pixel_values`` and decoder ids to ``logits``, is one graph, validated end to end.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

from hatch_onnx.models._base import VISION_OUTPUTS
from hatch_onnx.models._support import ModelSupport
from hatch_onnx.config import OnnxConfig


class VisionEncoderDecoderOnnxConfig(OnnxConfig):
    ATOL_FOR_VALIDATION = 1e-4
    _tasks_to_common_outputs = VISION_OUTPUTS

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        return OrderedDict(
            pixel_values={0: "batch", 1: "num_channels", 2: "height", 3: "width"},
            decoder_input_ids={0: "batch", 1: "decoder_sequence"},
            decoder_attention_mask={0: "batch", 1: "decoder_sequence"},
        )

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        return OrderedDict(logits={0: "batch", 1: "decoder_sequence"})

    def _image_size(self, height: int, width: int) -> tuple[int, int]:
        size = self._config.encoder.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def _dummy_text(self, preprocessor, draw):
        import numpy as np

        batch, seq = draw.batch, draw.sequence
        decoder = self._config.decoder
        special = {getattr(decoder, name, None) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
        allowed = np.array([i for i in range(int(decoder.vocab_size)) if i not in special], dtype=np.int64)
        return {
            "pixel_values": self._dummy_vision(None, draw, 3, 0, 0)["pixel_values"],
            "decoder_input_ids": draw.rng.choice(allowed, size=(batch, seq)).astype(np.int64),
            "decoder_attention_mask": np.ones((batch, seq), dtype=np.int64),
        }


SUPPORT = ModelSupport("vision-encoder-decoder", VisionEncoderDecoderOnnxConfig, features=("vision2seq-lm",), tensorflow=True)
