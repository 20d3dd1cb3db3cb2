"""The config families that architecture modules specialise in a few declarative lines.

Text encoders, decoders (GPT-2's and today's rotary ones), encoder-decoders, vision models and
dual encoders. What an architecture supports is declared apart, in :mod:`._support`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Mapping, Optional

from hatch_onnx.config import Draw, OnnxConfig, OnnxConfigWithPast, OnnxSeq2SeqConfigWithPast

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


# --- text encoders ---------------------------------------------------------------------------


class TextEncoderOnnxConfig(OnnxConfig):
    """BERT and its relatives: token ids, attention mask and (optionally) token types."""

    USES_TOKEN_TYPE_IDS = True

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        if self.task == "multiple-choice":
            axes = {0: "batch", 1: "choice", 2: "sequence"}
        else:
            axes = {0: "batch", 1: "sequence"}
        names = ["input_ids", "attention_mask"]
        if self.USES_TOKEN_TYPE_IDS and getattr(self._config, "type_vocab_size", 1) > 0:
            names.append("token_type_ids")
        return OrderedDict((name, dict(axes)) for name in names)


# --- decoders --------------------------------------------------------------------------------


class DecoderOnnxConfig(OnnxConfigWithPast):
    """GPT-2 style decoders: token ids, a mask over past + current tokens, the cache.

    Their sequence-classification head scores the last token that is not padding, and refuses
    batches of more than one without a ``pad_token_id``, which real checkpoints (GPT-2's) lack.
    Then the eos token stands for padding, as transformers' own pipelines set it: the graph
    behaves as the model does with ``pad_token_id = eos_token_id`` (the report says so). A
    config without an eos token either (a bare Qwen2Config) gets :data:`NO_PAD_TOKEN`, an id no
    token has: every row scores its last token, which is what the model does for one sequence.

    Default and causal-LM graphs take ``position_ids`` beside the mask (after it, the legacy
    order kept), as Optimum's and transformers.js's do: with left padding, as in batched
    generation, a token's position is not its index, and a graph that computes positions from
    indices gives the padded rows other tokens than the model (the legacy interface had none).
    Validation pads the last row on the left (``DummySpec.left_padding``), at another past length.
    """

    NO_PAD_TOKEN = -1
    # False for decoders whose positions come from the mask alone (BLOOM's ALiBi).
    POSITION_IDS = True

    @property
    def takes_position_ids(self) -> bool:
        return self.POSITION_IDS and self.task in ("default", "causal-lm")

    @property
    def values_override(self) -> Optional[Mapping[str, Any]]:
        values = dict(super().values_override or {})
        config = self._config
        if self.task == "sequence-classification" and getattr(config, "pad_token_id", None) is None:
            eos = getattr(config, "eos_token_id", None)
            eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
            values["pad_token_id"] = eos if isinstance(eos, int) else self.NO_PAD_TOKEN
        return values or None

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        common: dict = OrderedDict({"input_ids": {0: "batch", 1: "sequence"}})
        if self.use_past:
            self.fill_with_past_key_values_(common, direction="inputs")
            common["attention_mask"] = {0: "batch", 1: "past_sequence + sequence"}
        else:
            common["attention_mask"] = {0: "batch", 1: "sequence"}
        if self.takes_position_ids:
            common["position_ids"] = {0: "batch", 1: "sequence"}
        return common

    def _dummy_text(self, preprocessor: Any, draw: Draw) -> dict[str, np.ndarray]:
        import numpy as np

        arrays = super()._dummy_text(preprocessor, draw)
        if not self.POSITION_IDS:
            return arrays
        # Every task's validation pads (the positions are dropped where the graph takes none).
        mask = arrays["attention_mask"]
        if draw.left_padding:  # the last row starts with padding, as a shorter prompt in a batch does
            mask[-1, : draw.left_padding] = 0
        # What generate() computes: positions count the tokens attended to; padding gets 1.
        positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
        arrays["position_ids"] = positions[:, -arrays["input_ids"].shape[1]:].astype(np.int64)
        return arrays

    def padded_positions(self, inputs: Mapping[str, Any]) -> "Optional[np.ndarray]":
        import numpy as np

        if not self.POSITION_IDS:
            return None
        mask = np.asarray(inputs["attention_mask"])
        return mask[:, -np.asarray(inputs["input_ids"]).shape[1]:] == 0


class RotaryDecoderOnnxConfig(DecoderOnnxConfig):
    """Today's decoders (Llama, Mistral, Qwen, Gemma, Phi-3...): rotary positions and grouped-query caches.

    The graph takes ``position_ids`` beside the mask (default and causal-LM graphs, as Optimum's):
    with left padding, as in batched generation, a token's position is not its index. The cache
    is flat, as GPT-2's, with ``num_key_value_heads`` heads of ``head_dim`` (grouped-query
    attention): ``past_key_values.{i}.key|value`` in, ``present.{i}.key|value`` out.
    """

    ATOL_FOR_VALIDATION = 1e-4

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        mask_axis = "past_sequence + sequence" if self.use_past else "sequence"
        common: dict = OrderedDict({"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: mask_axis}})
        if self.takes_position_ids:
            common["position_ids"] = {0: "batch", 1: "sequence"}
        if self.use_past:
            self.fill_with_past_key_values_(common, direction="inputs")
        return common

    @property
    def num_key_value_heads(self) -> int:
        return int(getattr(self._config, "num_key_value_heads", None) or self.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(getattr(self._config, "head_dim", None) or super().head_dim)

    def _past_shape(self, batch: int, length: int) -> tuple[int, int, int, int]:
        return batch, self.num_key_value_heads, length, self.head_dim


# --- encoder-decoders ------------------------------------------------------------------------


class Seq2SeqOnnxConfig(OnnxSeq2SeqConfigWithPast):
    """T5 and BART: encoder ids and mask, decoder ids and mask, per-layer caches.

    Heads that run the decoder on shifted encoder ids (classification, question answering)
    take the encoder inputs only.
    """

    DECODER_SEQUENCE_DELTA = 3  # decoder length = encoder length - delta, to keep the axes apart

    @property
    def takes_decoder_inputs(self) -> bool:
        return self.task in ("default", "seq2seq-lm")

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        common: dict = OrderedDict(
            {"input_ids": {0: "batch", 1: "encoder_sequence"}, "attention_mask": {0: "batch", 1: "encoder_sequence"}}
        )
        if not self.takes_decoder_inputs:
            common["input_ids"] = {0: "batch", 1: "sequence"}
            common["attention_mask"] = {0: "batch", 1: "sequence"}
            return common
        common["decoder_input_ids"] = {0: "batch", 1: "decoder_sequence"}
        if self.use_past:
            # A decoding step: the encoder ran once, its keys and values are in the cache, and
            # only its mask is still read (by cross-attention). No encoder in this graph.
            del common["input_ids"]
            common["decoder_attention_mask"] = {0: "batch", 1: "past_decoder_sequence + decoder_sequence"}
            self.fill_with_past_key_values_(common, direction="inputs")
        else:
            common["decoder_attention_mask"] = {0: "batch", 1: "decoder_sequence"}
        return common

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        if not self.takes_decoder_inputs:
            return OnnxConfig.outputs.fget(self)
        return super().outputs

    def _dummy_decoder(self, draw: Draw, encoder_seq: int) -> dict[str, np.ndarray]:
        import numpy as np

        rng, batch = draw.rng, draw.batch
        seq = max(encoder_seq - self.DECODER_SEQUENCE_DELTA, 2)
        arrays = {"decoder_input_ids": self._random_token_ids(rng, (batch, seq))}
        past = draw.past if self.use_past else 0
        arrays["decoder_attention_mask"] = np.ones((batch, past + seq), dtype=np.int64)
        if self.use_past:
            for i in range(self.num_layers):
                for part, length in (("decoder", past), ("encoder", encoder_seq)):
                    for kind in ("key", "value"):
                        arrays[f"past_key_values.{i}.{part}.{kind}"] = rng.standard_normal(
                            self._past_shape(batch, length), dtype=np.float32
                        )
        return arrays

    def _dummy_text(self, preprocessor: Any, draw: Draw) -> dict[str, np.ndarray]:
        arrays = OnnxConfig._dummy_text(self, preprocessor, draw)
        if self.takes_decoder_inputs:
            arrays.update(self._dummy_decoder(draw, arrays["input_ids"].shape[1]))
        return arrays


class SpeechSeq2SeqOnnxConfig(Seq2SeqOnnxConfig):
    """Whisper: log-mel features into the encoder, token ids into the decoder."""

    MODALITY = "audio"

    @property
    def takes_decoder_inputs(self) -> bool:
        return True

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        common: dict = OrderedDict(
            {
                "input_features": {0: "batch", 1: "feature_size", 2: "encoder_sequence"},
                "decoder_input_ids": {0: "batch", 1: "decoder_sequence"},
            }
        )
        if self.use_past:  # a decoding step: the encoder's output is in the cache
            del common["input_features"]
            self.fill_with_past_key_values_(common, direction="inputs")
        return common

    def _dummy_audio(self, preprocessor: Any, draw: Draw, seq_length: int, sampling_rate: int, time_duration: float,
                     frequency: int) -> dict[str, np.ndarray]:
        import numpy as np

        rng, batch = draw.rng, draw.batch
        frames = 2 * int(self._config.max_source_positions)  # Whisper accepts exactly this length
        if preprocessor is not None and hasattr(preprocessor, "sampling_rate"):
            rate = int(preprocessor.sampling_rate)
            t = np.linspace(0, time_duration, int(time_duration * rate), endpoint=False)
            wave = (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
            features = preprocessor([wave] * batch, sampling_rate=rate, return_tensors="np")["input_features"]
            features = np.asarray(features, dtype=np.float32)[..., :frames]
        else:
            features = rng.standard_normal((batch, int(self._config.num_mel_bins), frames), dtype=np.float32)
        decoder_seq = self._fixed(seq_length, self.default_sequence_length)
        arrays = {"input_features": features}
        arrays.update(self._dummy_decoder(draw, decoder_seq + self.DECODER_SEQUENCE_DELTA))
        # The cross-attention cache spans the encoder's output, which Whisper halves.
        if self.use_past:
            length = int(self._config.max_source_positions)
            for i in range(self.num_layers):
                for kind in ("key", "value"):
                    arrays[f"past_key_values.{i}.encoder.{kind}"] = rng.standard_normal(
                        self._past_shape(batch, length), dtype=np.float32
                    )
        return arrays


# --- vision ----------------------------------------------------------------------------------


# The legacy outputs of the vision heads beyond classification.
VISION_OUTPUTS: Mapping[str, Mapping[str, Mapping[int, str]]] = {
    **OnnxConfig._tasks_to_common_outputs,
    "object-detection": {"logits": {0: "batch", 1: "sequence"}, "pred_boxes": {0: "batch", 1: "sequence"}},
    "image-segmentation": {
        "logits": {0: "batch", 1: "sequence"},
        "pred_boxes": {0: "batch", 1: "sequence"},
        "pred_masks": {0: "batch", 1: "sequence", 2: "height", 3: "width"},
    },
    "semantic-segmentation": {"logits": {0: "batch", 1: "num_labels", 2: "height", 3: "width"}},
    "vision2seq-lm": {"logits": {0: "batch", 1: "sequence"}},
}


class VisionOnnxConfig(OnnxConfig):
    """Image models: one ``pixel_values`` tensor."""

    MODALITY = "vision"
    _tasks_to_common_outputs = VISION_OUTPUTS
    # Name every axis of the image dynamic; False: only the batch (fixed-resolution models).
    DYNAMIC_IMAGE_AXES = True

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        axes = {0: "batch", 1: "num_channels", 2: "height", 3: "width"} if self.DYNAMIC_IMAGE_AXES else {0: "batch"}
        common: dict = OrderedDict({"pixel_values": axes})
        if self.task == "masked-im":
            common["bool_masked_pos"] = {0: "batch"}
        return common


class ConvVisionOnnxConfig(VisionOnnxConfig):
    """Convolutional backbones: feature maps and a pooled vector."""

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        if self.task == "default":
            return OrderedDict({"last_hidden_state": {0: "batch"}, "pooler_output": {0: "batch"}})
        return super().outputs


class FeatureMapOnnxConfig(VisionOnnxConfig):
    """Backbones whose ``last_hidden_state`` is a feature map (batch, channels, height, width), no pooler."""

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        if self.task == "default":
            return OrderedDict({"last_hidden_state": {0: "batch"}})
        return super().outputs


# --- multimodal ------------------------------------------------------------------------------


class DualEncoderOnnxConfig(OnnxConfig):
    """CLIP and its relatives: token ids, an image and the text's mask in; both towers' projected
    embeddings and the image-text similarity logits out.

    image-classification (SigLIP's head) is the vision tower alone: pixels in, logits out.
    """

    ATOL_FOR_VALIDATION = 1e-4
    APPEND_EOS = True  # the text tower pools the hidden state at the end-of-text token
    # False where the text tower was trained without a mask and the checkpoints' tokenizers
    # return none (SigLIP's: input ids padded to a fixed length, every token attended).
    TEXT_MASK = True

    @property
    def MODALITY(self) -> str:  # noqa: N802 - the base class reads it as a setting
        return "vision" if self.task == "image-classification" else "text"

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        pixels = {"pixel_values": {0: "batch", 1: "num_channels", 2: "height", 3: "width"}}
        if self.task == "image-classification":
            return OrderedDict(pixels)
        common = OrderedDict({"input_ids": {0: "batch", 1: "sequence"}, **pixels})
        if self.TEXT_MASK:
            common["attention_mask"] = {0: "batch", 1: "sequence"}
        return common

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        if self.task == "image-classification":
            return super().outputs
        names = ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds")
        return OrderedDict((name, {0: "batch"}) for name in names)

    def _image_size(self, height: int, width: int) -> tuple[int, int]:
        size = self._config.vision_config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def _text_config(self) -> Any:
        # The vocabulary, special tokens and eos are the text tower's: the outer config has none
        # (ids would come from 100 or overrun a smaller vocabulary, and eos never be appended).
        return self._config.text_config

    def _dummy_text(self, preprocessor: Any, draw: Draw) -> dict[str, np.ndarray]:
        arrays = super()._dummy_text(preprocessor, draw)
        arrays["pixel_values"] = self._dummy_vision(None, draw, 3, 0, 0)["pixel_values"]
        return arrays
