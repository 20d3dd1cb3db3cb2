"""TensorFlow -> ONNX through tf2onnx (stub in progress)."""

from __future__ import annotations

from hatch_onnx.onnx.config import OnnxConfig  # first: it loads hatch_onnx.onnx, then the registry
from hatch_onnx.models import REGISTRY, feature_to_task

# The legacy exporter's TensorFlow tasks (``_TASKS_TO_TF_AUTOMODELS``) that our architectures
# have, each with the architectures transformers 4.57 has a TF class for (its
# ``TF_MODEL_*_MAPPING_NAMES``); tests check this table against transformers.
TF_TASK_MODEL_TYPES: dict[str, frozenset[str]] = {
    "default": frozenset({"albert", "bart", "bert", "convnext", "deberta-v2", "distilbert", "electra", "gpt2", "resnet", "roberta", "t5", "vit", "whisper", "xlm-roberta"}),
    "masked-lm": frozenset({"albert", "bert", "deberta-v2", "distilbert", "electra", "roberta", "xlm-roberta"}),
    "causal-lm": frozenset({"bert", "gpt2", "roberta", "xlm-roberta"}),
    "seq2seq-lm": frozenset({"bart", "t5"}),
    "sequence-classification": frozenset({"albert", "bart", "bert", "deberta-v2", "distilbert", "electra", "gpt2", "roberta", "xlm-roberta"}),
    "token-classification": frozenset({"albert", "bert", "deberta-v2", "distilbert", "electra", "roberta", "xlm-roberta"}),
    "multiple-choice": frozenset({"albert", "bert", "deberta-v2", "distilbert", "electra", "roberta", "xlm-roberta"}),
    "question-answering": frozenset({"albert", "bert", "deberta-v2", "distilbert", "electra", "roberta", "xlm-roberta"}),
    "image-classification": frozenset({"convnext", "resnet", "vit"}),
    "speech2seq-lm": frozenset({"whisper"}),
}


def tf_features(model_type: str) -> tuple[str, ...]:
    support = REGISTRY.get(model_type)
    if support is None:
        return ()
    return tuple(f for f in support.features if model_type in TF_TASK_MODEL_TYPES.get(feature_to_task(f), ()))


def tf_model_types() -> tuple[str, ...]:
    return tuple(t for t in REGISTRY if tf_features(t))
