"""ONNX export configurations: the ``transformers.onnx`` v4.24 ``OnnxConfig`` family.

A config describes one (architecture, feature): the graph's inputs and outputs with their
named dynamic axes, the minimum opset, the validation tolerance, and how to make dummy
inputs. It imports no ML framework at module level, so the light core (params checks,
``hatch-onnx features``) can read the support matrix without torch or TensorFlow.

Differences from the legacy module, on purpose:
- dummy values are seeded (``numpy.random.default_rng(seed)``), so exports are reproducible
  and validation is repeatable; without a preprocessor they are made from the model config;
- ``framework=None`` returns numpy arrays (the legacy code required a framework);
- ``default_onnx_opset`` is 14 (the legacy 11 cannot express today's attention ops).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from transformers import PretrainedConfig

DEFAULT_ONNX_OPSET = 14
# Protobuf's limit on one serialised graph is 2 GiB. Graphs whose weights take 1 GiB or more are
# written with external data (``model.onnx.data``): the tools that rewrite a graph
# (onnxruntime's optimizer fuses and copies weights) must stay under the limit too. Both
# framework back-ends decide by the bytes of weights they write. Tests lower it to exercise the
# path on a tiny model.
EXTERNAL_DATA_THRESHOLD = 2**30

# The flat cache names of every graph with past, on both frameworks and for every consumer:
# ``past_key_values.{layer}[.decoder|.encoder].{key|value}`` in, ``present.…`` out
# (:meth:`OnnxConfigWithPast.fill_with_past_key_values_` writes them).
PAST = re.compile(r"^past_key_values\.(\d+)\.(?:(decoder|encoder)\.)?(key|value)$")
PRESENT = re.compile(r"^present\.(\d+)\.(?:(decoder|encoder)\.)?(key|value)$")


def check_input_names(config: "OnnxConfig", names: list[str], what: str) -> None:
    """The graph's inputs are the config's, in its order: never what a preprocessor happens to return."""
    from hatch_onnx.errors import InputMismatchError

    expected = list(config.inputs)
    if names != expected:
        raise InputMismatchError(f"inputs differ: the config names {expected}, {what} have {names}", value=names)


def apply_values_override(model: Any, config: "OnnxConfig") -> Any:
    """Set the config's ``values_override`` (``use_cache``, a pad token) on the model's config; returns the model."""
    for key, value in (config.values_override or {}).items():
        setattr(model.config, key, value)
    return model


def decoder_start_token_id(model_config: Any) -> Optional[int]:
    """The token an encoder-decoder's decoder starts from: its own, else its bos token (mBART's), as ``generate`` does."""
    value = getattr(model_config, "decoder_start_token_id", None)
    return value if value is not None else getattr(model_config, "bos_token_id", None)


def needs_external_data(weight_bytes: int) -> bool:
    """Whether a graph with ``weight_bytes`` of weights is written with external data."""
    return weight_bytes >= EXTERNAL_DATA_THRESHOLD


class Framework(str, enum.Enum):
    """What ``generate_dummy_inputs`` returns; accepts transformers' ``TensorType`` values."""

    PYTORCH = "pt"
    TENSORFLOW = "tf"
    NUMPY = "np"

    @classmethod
    def parse(cls, value: Any) -> "Framework":
        if value is None:
            return cls.NUMPY
        return cls(getattr(value, "value", value))


@dataclasses.dataclass
class PatchingSpec:
    """Replace ``o.name`` with ``custom_op`` while exporting (``op_wrapper`` may wrap the original)."""

    o: Any
    name: str
    custom_op: Callable
    orig_op: Optional[Callable] = None
    op_wrapper: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class DummySpec:
    """What one call of :meth:`OnnxConfig.dummy_inputs` asks for; the config keeps no part of it.

    -1 sizes take the config's defaults; ``seed`` None the config's :attr:`~OnnxConfig.DUMMY_SEED`;
    ``past_length`` None its :attr:`~OnnxConfigWithPast.PAST_SEQUENCE`. ``left_padding`` pads the
    last row on the left by that many tokens, as a shorter prompt in a batch is (configs that
    take ``position_ids`` read it).
    """

    batch_size: int = -1
    seq_length: int = -1
    num_choices: int = -1
    is_pair: bool = False
    seed: Optional[int] = None
    past_length: Optional[int] = None
    left_padding: int = 0
    num_channels: int = 3
    image_width: int = 40
    image_height: int = 40
    sampling_rate: int = 22050
    time_duration: float = 5.0
    frequency: int = 220


@dataclasses.dataclass(frozen=True)
class Draw:
    """One draw in progress, as the ``_dummy_*`` hooks receive it: resolved sizes and its generator."""

    rng: "np.random.Generator"
    batch: int
    sequence: int
    choices: Optional[int]
    is_pair: bool
    past: int
    left_padding: int


_COMMON_OUTPUTS: Mapping[str, Mapping[str, Mapping[int, str]]] = {
    "causal-lm": {"logits": {0: "batch", 1: "sequence"}},
    "default": {"last_hidden_state": {0: "batch", 1: "sequence"}},
    "image-classification": {"logits": {0: "batch"}},
    "masked-im": {"reconstruction": {0: "batch"}},
    "masked-lm": {"logits": {0: "batch", 1: "sequence"}},
    "multiple-choice": {"logits": {0: "batch", 1: "choice"}},
    "question-answering": {
        "start_logits": {0: "batch", 1: "sequence"},
        "end_logits": {0: "batch", 1: "sequence"},
    },
    "seq2seq-lm": {"logits": {0: "batch", 1: "decoder_sequence"}},
    "sequence-classification": {"logits": {0: "batch"}},
    "token-classification": {"logits": {0: "batch", 1: "sequence"}},
    "speech2seq-lm": {"logits": {0: "batch", 1: "decoder_sequence"}},
}


def _to_framework(arrays: Mapping[str, np.ndarray], framework: Framework) -> "OrderedDict[str, Any]":
    import numpy as np

    if framework is Framework.PYTORCH:
        import torch

        return OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in arrays.items())
    if framework is Framework.TENSORFLOW:
        import tensorflow as tf

        return OrderedDict((k, tf.constant(v)) for k, v in arrays.items())
    return OrderedDict(arrays)


class OnnxConfig:
    """Base class describing how to export one model to ONNX for one task."""

    default_fixed_batch = 2
    default_fixed_sequence = 8
    default_fixed_num_choices = 4
    # Seed of the export's dummy values: same config, same inputs, same graph bytes (a draw may
    # ask for another: DummySpec.seed).
    DUMMY_SEED = 0
    DEFAULT_ONNX_OPSET = DEFAULT_ONNX_OPSET
    ATOL_FOR_VALIDATION = 1e-5
    # Which kind of inputs the architecture takes: "text", "vision" or "audio".
    MODALITY = "text"
    _tasks_to_common_outputs = _COMMON_OUTPUTS

    def __init__(self, config: "PretrainedConfig", task: str = "default", patching_specs: Optional[list[PatchingSpec]] = None):
        self._config = config
        if task not in self._tasks_to_common_outputs:
            raise ValueError(f"{task} is not a supported task, supported tasks: {sorted(self._tasks_to_common_outputs)}")
        self.task = task
        self._patching_specs = []
        for spec in patching_specs or []:
            final = spec
            if spec.orig_op is None:
                final = dataclasses.replace(spec, orig_op=getattr(spec.o, spec.name))
            self._patching_specs.append(final)

    @classmethod
    def from_model_config(cls, config: "PretrainedConfig", task: str = "default") -> "OnnxConfig":
        return cls(config, task=task)

    # --- what the graph looks like ---------------------------------------------------------

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        raise NotImplementedError()

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        return OrderedDict((k, dict(v)) for k, v in self._tasks_to_common_outputs[self.task].items())

    @property
    def values_override(self) -> Optional[Mapping[str, Any]]:
        if hasattr(self._config, "use_cache"):
            return {"use_cache": False}
        return None

    @property
    def default_batch_size(self) -> int:
        return OnnxConfig.default_fixed_batch

    @property
    def default_sequence_length(self) -> int:
        return OnnxConfig.default_fixed_sequence

    @property
    def default_num_choices(self) -> int:
        return OnnxConfig.default_fixed_num_choices

    @property
    def default_onnx_opset(self) -> int:
        return self.DEFAULT_ONNX_OPSET

    @property
    def atol_for_validation(self) -> float:
        return self.ATOL_FOR_VALIDATION

    @property
    def is_torch_support_available(self) -> bool:
        from importlib.util import find_spec

        return find_spec("torch") is not None

    @staticmethod
    def use_external_data_format(num_parameters: int) -> bool:
        """True when as many float32 parameters take external data (see :func:`needs_external_data`).

        The legacy API's question; the back-ends ask :func:`needs_external_data` with the bytes they write.
        """
        return needs_external_data(num_parameters * 4)

    # --- dummy inputs -------------------------------------------------------------------------

    @staticmethod
    def _fixed(value: int, default: int, num_token_to_add: int = 0) -> int:
        # -1 means "dynamic": use a fixed size other than 1, which ONNX exporters would specialise.
        if value <= 0:
            value = default
        return value - num_token_to_add if value - num_token_to_add > 0 else value

    def generate_dummy_inputs(
        self,
        preprocessor: Any = None,
        batch_size: int = -1,
        seq_length: int = -1,
        num_choices: int = -1,
        is_pair: bool = False,
        framework: Any = None,
        num_channels: int = 3,
        image_width: int = 40,
        image_height: int = 40,
        sampling_rate: int = 22050,
        time_duration: float = 5.0,
        frequency: int = 220,
        tokenizer: Any = None,
    ) -> Mapping[str, Any]:
        """Inputs for the exporter, ordered as :attr:`inputs` (the legacy signature; see :meth:`dummy_inputs`).

        With a preprocessor (a tokenizer, image processor or feature extractor) the values come
        from it, as in the legacy API; without one they are drawn from the model config alone.
        """
        if tokenizer is not None and preprocessor is None:
            preprocessor = tokenizer
        spec = DummySpec(
            batch_size=batch_size, seq_length=seq_length, num_choices=num_choices, is_pair=is_pair, num_channels=num_channels,
            image_width=image_width, image_height=image_height, sampling_rate=sampling_rate, time_duration=time_duration,
            frequency=frequency,
        )
        return self.dummy_inputs(preprocessor, spec, framework)

    def dummy_inputs(self, preprocessor: Any = None, spec: "DummySpec | None" = None, framework: Any = None) -> Mapping[str, Any]:
        """Inputs as ``spec`` asks (sizes, seed, cache length, padding), ordered as :attr:`inputs`.

        Every parameter of the draw is in ``spec`` and in the :class:`Draw` handed to the
        ``_dummy_*`` hooks, never on the config: one config serves any number of draws.
        """
        import numpy as np

        spec = spec or DummySpec()
        framework = Framework.parse(framework)
        past = getattr(self, "PAST_SEQUENCE", 0) if spec.past_length is None else spec.past_length
        draw = Draw(
            rng=np.random.default_rng(self.DUMMY_SEED if spec.seed is None else spec.seed),
            batch=self._fixed(spec.batch_size, self.default_batch_size),
            sequence=self._fixed(spec.seq_length, self.default_sequence_length),
            choices=self._fixed(spec.num_choices, self.default_num_choices) if self.task == "multiple-choice" else None,
            is_pair=spec.is_pair, past=past, left_padding=spec.left_padding,
        )
        if self.MODALITY == "vision":
            arrays = self._dummy_vision(preprocessor, draw, spec.num_channels, spec.image_height, spec.image_width)
        elif self.MODALITY == "audio":
            arrays = self._dummy_audio(preprocessor, draw, spec.seq_length, spec.sampling_rate, spec.time_duration, spec.frequency)
        else:
            arrays = self._dummy_text(preprocessor, draw)
        ordered = OrderedDict((name, arrays[name]) for name in self.inputs if name in arrays)
        return _to_framework(ordered, framework)

    # Text: token ids drawn among the non-special tokens, so that heads which look for special
    # tokens (BART's eos, GPT-2's padding) see exactly the ones placed on purpose.
    @property
    def _text_config(self) -> Any:
        """The config whose vocabulary and special tokens the token ids come from (an override point)."""
        return self._config

    def _special_ids(self) -> set[int]:
        ids = set()
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id", "sep_token_id", "cls_token_id",
                     "decoder_start_token_id", "mask_token_id", "unk_token_id"):
            value = getattr(self._text_config, attr, None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    def _random_token_ids(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        import numpy as np

        vocab = int(getattr(self._text_config, "vocab_size", 100))
        special = self._special_ids()
        allowed = np.setdiff1d(np.arange(vocab, dtype=np.int64), np.fromiter(special, dtype=np.int64))
        return rng.choice(allowed, size=shape).astype(np.int64)

    def _dummy_text(self, preprocessor: Any, draw: "Draw") -> dict[str, np.ndarray]:
        import numpy as np

        batch, seq, choices, is_pair = draw.batch, draw.sequence, draw.choices, draw.is_pair
        shape = (batch, choices, seq) if choices else (batch, seq)
        if preprocessor is not None and hasattr(preprocessor, "unk_token"):
            text = " ".join([preprocessor.unk_token or "a"] * max(seq - preprocessor.num_special_tokens_to_add(is_pair), 1))
            texts = [text] * batch
            if choices:
                encoded = preprocessor([t for t in texts for _ in range(choices)], return_tensors="np")
                arrays = {k: np.asarray(v).reshape(batch, choices, -1).astype(np.int64) for k, v in encoded.items()}
            else:
                encoded = preprocessor(texts, text_pair=texts if is_pair else None, return_tensors="np")
                arrays = {k: np.asarray(v).astype(np.int64) for k, v in encoded.items()}
            # The tokenizer gives values, the config names the graph's inputs: transformers 5's
            # fast tokenizers no longer return token_type_ids, which BERT's graph still takes.
            ids = arrays["input_ids"]
            arrays.setdefault("attention_mask", np.ones(ids.shape, dtype=np.int64))
            arrays.setdefault("token_type_ids", np.zeros(ids.shape, dtype=np.int64))
            return arrays
        ids = self._random_token_ids(draw.rng, shape)
        eos = getattr(self._text_config, "eos_token_id", None)
        if self.APPEND_EOS and isinstance(eos, int):
            ids[..., -1] = eos
        return {
            "input_ids": ids,
            "attention_mask": np.ones(shape, dtype=np.int64),
            "token_type_ids": np.zeros(shape, dtype=np.int64),
        }

    # Set by architectures whose heads read the eos position (BART's classification head).
    APPEND_EOS = False

    def _image_size(self, height: int, width: int) -> tuple[int, int]:
        size = getattr(self._config, "image_size", None)
        if isinstance(size, int):
            return size, size
        if isinstance(size, (list, tuple)) and len(size) == 2:
            return int(size[0]), int(size[1])
        return height, width

    def _dummy_vision(self, preprocessor: Any, draw: "Draw", num_channels: int, height: int, width: int) -> dict[str, np.ndarray]:
        import numpy as np

        rng, batch = draw.rng, draw.batch
        channels = int(getattr(self._config, "num_channels", num_channels))
        height, width = self._image_size(height, width)
        if preprocessor is not None and hasattr(preprocessor, "image_mean"):
            from PIL import Image

            pixels = rng.integers(0, 256, size=(batch, height, width, channels), dtype=np.uint8)
            images = [Image.fromarray(p.squeeze(-1) if channels == 1 else p) for p in pixels]
            values = np.asarray(preprocessor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)
        else:
            values = rng.standard_normal((batch, channels, height, width), dtype=np.float32)
        out = {"pixel_values": values}
        if self.task == "masked-im":
            patches = (height // self._config.patch_size) * (width // self._config.patch_size)
            out["bool_masked_pos"] = rng.integers(0, 2, size=(batch, patches)).astype(bool)
        return out

    def _dummy_audio(self, preprocessor: Any, draw: "Draw", seq_length: int, sampling_rate: int, time_duration: float,
                     frequency: int) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} does not take audio inputs")

    def padded_positions(self, inputs: Mapping[str, Any]) -> "Optional[np.ndarray]":
        """Which (batch, sequence) positions of ``inputs`` are padding, or None when none can be.

        Validation does not compare outputs at padding: no one reads them, and a padded query
        attends to nothing, which float16 kernels resolve differently (our extension).
        """
        return None

    def generate_dummy_inputs_onnxruntime(self, reference_model_inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """Inputs for onnxruntime from the reference model's inputs (an override point)."""
        return reference_model_inputs

    # --- patching ----------------------------------------------------------------------------

    def patch_ops(self) -> None:
        for spec in self._patching_specs:
            custom_op = spec.custom_op if spec.op_wrapper is None else spec.op_wrapper(spec.custom_op)
            setattr(spec.o, spec.name, custom_op)

    def restore_ops(self) -> None:
        for spec in self._patching_specs:
            orig_op = spec.orig_op if spec.op_wrapper is None else spec.op_wrapper(spec.orig_op)
            setattr(spec.o, spec.name, orig_op)

    @classmethod
    def flatten_output_collection_property(cls, name: str, field: Iterable[Any]) -> dict[str, Any]:
        """``("present", [(k0, v0), (k1, v1)])`` -> ``{"present.0": k0, ...}`` one level at a time."""
        from itertools import chain

        return {f"{name}.{idx}": item for idx, item in enumerate(chain.from_iterable(field))}


class OnnxConfigWithPast(OnnxConfig):
    """A decoder that can take and return its key/value cache (``-with-past`` features)."""

    PAST_SEQUENCE = 4  # past length of the export's dummy inputs (a draw may ask for another: DummySpec)

    def __init__(self, config: "PretrainedConfig", task: str = "default", patching_specs: Optional[list[PatchingSpec]] = None, use_past: bool = False):
        super().__init__(config, task=task, patching_specs=patching_specs)
        self.use_past = use_past

    @classmethod
    def with_past(cls, config: "PretrainedConfig", task: str = "default") -> "OnnxConfigWithPast":
        return cls(config, task=task, use_past=True)

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        common = super().outputs
        if self.use_past:
            self.fill_with_past_key_values_(common, direction="outputs")
        return common

    @property
    def values_override(self) -> Optional[Mapping[str, Any]]:
        if hasattr(self._config, "use_cache"):
            return {"use_cache": self.use_past}
        return None

    @property
    def num_layers(self) -> int:
        for attr in ("num_layers", "n_layer", "num_hidden_layers", "decoder_layers"):
            if hasattr(self._config, attr):
                return int(getattr(self._config, attr))
        raise AttributeError("could not find the number of layers in the model configuration")

    @property
    def num_attention_heads(self) -> int:
        for attr in ("num_attention_heads", "n_head", "num_heads", "decoder_attention_heads"):
            if hasattr(self._config, attr):
                return int(getattr(self._config, attr))
        raise AttributeError("could not find the number of attention heads in the model configuration")

    @property
    def head_dim(self) -> int:
        hidden = getattr(self._config, "hidden_size", None) or getattr(self._config, "d_model")
        return int(hidden) // self.num_attention_heads

    def fill_with_past_key_values_(self, inputs_or_outputs: Mapping[str, Mapping[int, str]], direction: str, inverted_values_shape: bool = False) -> None:
        """Add ``past_key_values.{i}.key/value`` (inputs) or ``present.{i}.key/value`` (outputs)."""
        if direction not in ("inputs", "outputs"):
            raise ValueError(f'direction must either be "inputs" or "outputs", but {direction} was given')
        name = "past_key_values" if direction == "inputs" else "present"
        axis = "past_sequence" if direction == "inputs" else "past_sequence + sequence"
        for i in range(self.num_layers):
            inputs_or_outputs[f"{name}.{i}.key"] = {0: "batch", 2: axis}
            inputs_or_outputs[f"{name}.{i}.value"] = {0: "batch", 1 if inverted_values_shape else 2: axis}

    def _past_shape(self, batch: int, length: int) -> tuple[int, int, int, int]:
        return batch, self.num_attention_heads, length, self.head_dim

    def _dummy_text(self, preprocessor: Any, draw: "Draw") -> dict[str, np.ndarray]:
        import numpy as np

        arrays = super()._dummy_text(preprocessor, draw)
        if self.use_past:
            batch, past = draw.batch, draw.past
            shape = self._past_shape(batch, past)
            for i in range(self.num_layers):
                arrays[f"past_key_values.{i}.key"] = draw.rng.standard_normal(shape, dtype=np.float32)
                arrays[f"past_key_values.{i}.value"] = draw.rng.standard_normal(shape, dtype=np.float32)
            mask = arrays["attention_mask"]
            arrays["attention_mask"] = np.concatenate([np.ones((batch, past), dtype=mask.dtype), mask], axis=1)
        return arrays


class OnnxSeq2SeqConfigWithPast(OnnxConfigWithPast):
    """An encoder-decoder whose decoder can take and return its cache."""

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        common = OnnxConfig.outputs.fget(self)
        for name, axes in common.items():
            for axis, axis_name in list(axes.items()):
                if axis_name == "sequence":
                    axes[axis] = "decoder_sequence"
        if self.use_past:
            self.fill_with_past_key_values_(common, direction="outputs")
        return common

    @property
    def num_layers(self) -> int:
        for attr in ("decoder_layers", "num_decoder_layers", "num_layers", "num_hidden_layers"):
            if hasattr(self._config, attr):
                return int(getattr(self._config, attr))
        raise AttributeError("could not find the number of decoder layers in the model configuration")

    @property
    def num_attention_heads(self) -> int:
        for attr in ("decoder_attention_heads", "num_heads", "num_attention_heads"):
            if hasattr(self._config, attr):
                return int(getattr(self._config, attr))
        raise AttributeError("could not find the number of attention heads in the model configuration")

    @property
    def head_dim(self) -> int:
        if hasattr(self._config, "d_kv"):  # T5 sets it apart from d_model / heads
            return int(self._config.d_kv)
        return int(self._config.d_model) // self.num_attention_heads

    def fill_with_past_key_values_(self, inputs_or_outputs: Mapping[str, Mapping[int, str]], direction: str, inverted_values_shape: bool = False) -> None:
        """Per layer: the decoder's self-attention cache and the cross-attention cache of the encoder."""
        if direction not in ("inputs", "outputs"):
            raise ValueError(f'direction must either be "inputs" or "outputs", but {direction} was given')
        name = "past_key_values" if direction == "inputs" else "present"
        decoder_axis = "past_decoder_sequence" if direction == "inputs" else "past_decoder_sequence + sequence"
        for i in range(self.num_layers):
            inputs_or_outputs[f"{name}.{i}.decoder.key"] = {0: "batch", 2: decoder_axis}
            inputs_or_outputs[f"{name}.{i}.decoder.value"] = {0: "batch", 2: decoder_axis}
            inputs_or_outputs[f"{name}.{i}.encoder.key"] = {0: "batch", 2: "encoder_sequence"}
            inputs_or_outputs[f"{name}.{i}.encoder.value"] = {0: "batch", 2: "encoder_sequence"}
