"""What an architecture can export: the feature tables and :class:`ModelSupport`, which checks itself.

An architecture module names its ONNX config (a family from :mod:`hatch_onnx.models._base`
with a few upper-case settings) and its features in a :class:`ModelSupport` value named
``SUPPORT``; ``hatch_onnx.models`` collects those values into the frozen registry.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Mapping

from hatch_onnx.config import OnnxConfig, OnnxConfigWithPast

# feature name -> transformers auto class (PyTorch); TF names add the "TF" prefix.
FEATURE_TO_AUTOMODEL: Mapping[str, str] = {
    "default": "AutoModel",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "multiple-choice": "AutoModelForMultipleChoice",
    "question-answering": "AutoModelForQuestionAnswering",
    "image-classification": "AutoModelForImageClassification",
    "masked-im": "AutoModelForMaskedImageModeling",
    "speech2seq-lm": "AutoModelForSpeechSeq2Seq",
    "object-detection": "AutoModelForObjectDetection",
    "image-segmentation": "AutoModelForImageSegmentation",
    "semantic-segmentation": "AutoModelForSemanticSegmentation",
    # AutoModelForVision2Seq is gone from transformers 5; both lines map vision-encoder-decoder here.
    "vision2seq-lm": "AutoModelForImageTextToText",
}
# feature name -> transformers 4.57's TensorFlow auto class: "TF" + the PyTorch name, except where
# TF kept an older name (TF_MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES; there is no TFAutoModelForImageTextToText).
FEATURE_TO_TF_AUTOMODEL: Mapping[str, str] = {
    **{task: f"TF{name}" for task, name in FEATURE_TO_AUTOMODEL.items()},
    "vision2seq-lm": "TFAutoModelForVision2Seq",
}
# The newest opset each exporter writes (torch 2.13's TorchScript and dynamo exporters, tf2onnx 1.17).
MAX_OPSET: Mapping[str, int] = {"torchscript": 20, "dynamo": 23, "tf2onnx": 18}
# Features whose model has no cache: "-with-past" is offered only for these tasks.
PAST_TASKS = frozenset({"default", "causal-lm", "seq2seq-lm", "speech2seq-lm", "vision2seq-lm"})


def feature_to_task(feature: str) -> str:
    return feature.replace("-with-past", "")


@dataclasses.dataclass(frozen=True)
class ModelSupport:
    """What one architecture can export: its config class and its features."""

    model_type: str
    onnx_config: type[OnnxConfig]
    features: tuple[str, ...]
    # The features that also export from TensorFlow checkpoints: those transformers 4.57 has a
    # TF class for (its ``TF_MODEL_*_MAPPING_NAMES``; a test checks). ``True``: every feature.
    tensorflow: "bool | tuple[str, ...]" = ()
    # Features that a transformers line cannot export, each with the reason (``hatch-onnx
    # features`` shows it): on every line, on transformers 5 only, on transformers 4 only.
    unavailable: Mapping[str, str] = dataclasses.field(default_factory=dict)
    unavailable_on_transformers5: Mapping[str, str] = dataclasses.field(default_factory=dict)
    unavailable_on_transformers4: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for feature in self.features:
            task = feature_to_task(feature)
            if task not in FEATURE_TO_AUTOMODEL or (feature.endswith("-with-past") and task not in PAST_TASKS):
                raise ValueError(f"{self.model_type}: unknown feature {feature!r}")
            if feature.endswith("-with-past") and not issubclass(self.onnx_config, OnnxConfigWithPast):
                raise ValueError(f"{self.model_type}: {feature!r} needs an OnnxConfigWithPast")
        tensorflow = self.features if self.tensorflow is True else tuple(self.tensorflow or ())
        if not set(tensorflow) <= set(self.features):
            raise ValueError(f"{self.model_type}: TensorFlow features {sorted(set(tensorflow) - set(self.features))} are not features")
        object.__setattr__(self, "tensorflow", tuple(f for f in self.features if f in tensorflow))  # registry order
        for field in ("unavailable", "unavailable_on_transformers5", "unavailable_on_transformers4"):
            unknown = set(getattr(self, field)) - set(self.features)
            if unknown:
                raise ValueError(f"{self.model_type}: {field} names {sorted(unknown)}, which are not features")
            object.__setattr__(self, field, MappingProxyType(dict(getattr(self, field))))

    def unavailable_reason(self, feature: str, transformers_major: int) -> "str | None":
        """Why ``feature`` cannot be exported with that transformers major version (None: it can)."""
        if feature in self.unavailable:
            return self.unavailable[feature]
        if transformers_major >= 5:
            return self.unavailable_on_transformers5.get(feature)
        return self.unavailable_on_transformers4.get(feature)

    def check(self, feature: str, framework: str = "pt", where: str = "", transformers_major: int = 4) -> None:
        """Raise :class:`UnsupportedFeatureError` unless ``feature`` exports from ``framework``.

        The one place feature support is decided: the plan, the exporter and the CLI call it.
        ``where`` prefixes the message (a checkpoint path); ``transformers_major`` is the line
        that will export (the plan, which runs before any worker, checks what every line lacks).
        """
        from hatch_onnx.errors import UnsupportedFeatureError

        prefix = f"{where}: " if where else ""
        if feature not in self.features:
            raise UnsupportedFeatureError(
                f"{prefix}{self.model_type} does not support feature {feature!r}; supported: {', '.join(self.features)}",
                model_type=self.model_type, feature=feature,
            )
        reason = self.unavailable_reason(feature, transformers_major)
        if reason is not None:
            raise UnsupportedFeatureError(
                f"{prefix}{self.model_type} cannot export feature {feature!r} with transformers {transformers_major}.x: {reason}",
                model_type=self.model_type, feature=feature,
            )
        if framework == "tf" and feature not in self.tensorflow:
            raise UnsupportedFeatureError(
                f"{prefix}{self.model_type} does not support feature {feature!r} with TensorFlow; "
                f"supported: {', '.join(self.tensorflow) or 'none (no TensorFlow classes)'}",
                model_type=self.model_type, feature=feature,
            )

    def opset(self, requested: "int | None", exporter: str = "torchscript") -> int:
        """The opset to export with: ``requested``, or the architecture's minimum when none is asked for.

        Raises :class:`OpsetError` for a request below the minimum or above what the exporter writes.
        """
        from hatch_onnx.errors import OpsetError

        minimum = self.onnx_config.DEFAULT_ONNX_OPSET
        if requested is None:
            return minimum
        if requested < minimum:
            raise OpsetError(f"opset {requested} is below the minimum {minimum} for {self.model_type}", opset=requested, minimum=minimum)
        maximum = MAX_OPSET.get(exporter, max(MAX_OPSET.values()))
        if requested > maximum:
            raise OpsetError(f"opset {requested} is above {maximum}, the newest {exporter} writes", opset=requested, minimum=minimum)
        return requested

    def config_for(self, feature: str):
        """The constructor the legacy API returns: ``config -> OnnxConfig``."""
        task = feature_to_task(feature)
        if feature.endswith("-with-past"):
            return lambda config: self.onnx_config.with_past(config, task=task)
        return lambda config: self.onnx_config.from_model_config(config, task=task)


# The features of decoders with a cache (GPT-2 and today's families), where transformers has the heads.
DECODER_FEATURES = ("default", "default-with-past", "causal-lm", "causal-lm-with-past", "sequence-classification", "token-classification")
# The features of BERT-like encoders (legacy transformers.onnx lists), shared by their modules.
TEXT_ENCODER_FEATURES = ("default", "masked-lm", "sequence-classification", "multiple-choice", "token-classification", "question-answering")
# ... and of those that also have a causal-LM head (BERT, RoBERTa and their kin).
CAUSAL_TEXT_ENCODER_FEATURES = ("default", "masked-lm", "causal-lm", *TEXT_ENCODER_FEATURES[2:])
