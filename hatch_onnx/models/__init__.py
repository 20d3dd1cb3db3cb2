"""The support matrix: one module per architecture, collected here into a frozen registry.

To add an architecture, write ``hatch_onnx/models/<name>.py`` with its config class and a
``SUPPORT = ModelSupport(...)`` line, then add the module to ``_MODULES`` below. The list is
explicit on purpose: the registry never depends on what happened to be imported.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import Mapping

from hatch_onnx.models._base import RotaryDecoderOnnxConfig
from hatch_onnx.models._support import FEATURE_TO_AUTOMODEL, FEATURE_TO_TF_AUTOMODEL, ModelSupport, feature_to_task

_MODULES = (
    "albert", "bart", "bert", "bloom", "convnext", "deberta_v2", "distilbert", "electra",
    "gpt2", "gpt_neo", "resnet", "roberta", "t5", "vit", "whisper", "xlm_roberta",
    # text encoders
    "big_bird", "camembert", "convbert", "data2vec_text", "deberta", "flaubert", "ibert", "layoutlm", "longformer",
    "mobilebert", "rembert", "roformer", "squeezebert", "xlm",
    # decoders
    "codegen", "gptj",
    # encoder-decoders
    "bigbird_pegasus", "blenderbot", "blenderbot_small", "longt5", "m2m_100", "marian", "mbart", "mt5",
    # vision
    "beit", "data2vec_vision", "deit", "detr", "imagegpt", "levit", "mobilenet_v1", "mobilenet_v2", "mobilevit",
    "poolformer", "segformer", "swin", "yolos",
    # multimodal
    "clip", "groupvit", "layoutlmv3", "owlvit", "perceiver", "vision_encoder_decoder",
    # today's encoders and vision
    "dinov2", "modernbert", "siglip",
    # today's decoders
    "gemma2", "gemma3_text", "granite", "llama", "mistral", "olmo2", "phi3", "qwen2", "qwen3", "smollm3",
)


def _load() -> Mapping[str, ModelSupport]:
    registry = {}
    for name in _MODULES:
        support = importlib.import_module(f"{__name__}.{name}").SUPPORT
        if support.model_type in registry:
            raise RuntimeError(f"model type {support.model_type!r} registered twice")
        registry[support.model_type] = support
    return MappingProxyType(dict(sorted(registry.items())))


REGISTRY: Mapping[str, ModelSupport] = _load()


def support_for(model_type: str, where: str = "") -> ModelSupport:
    """The registry's entry for ``model_type`` (``bert``, ``deberta_v2``...), or :class:`UnsupportedModelTypeError`."""
    support = REGISTRY.get(model_type.replace("_", "-"))
    if support is None:
        from hatch_onnx.errors import UnsupportedModelTypeError

        prefix = f"{where}: " if where else ""
        raise UnsupportedModelTypeError(f"{prefix}model type {model_type!r} is not supported; supported: {', '.join(REGISTRY)}", model_type)
    return support


def tf_features(model_type: str) -> tuple[str, ...]:
    """The features ``model_type`` exports from TensorFlow checkpoints (none for an unknown type)."""
    support = REGISTRY.get(model_type.replace("_", "-"))
    return support.tensorflow if support is not None else ()


def tf_model_types() -> tuple[str, ...]:
    """The architectures with at least one TensorFlow feature."""
    return tuple(model_type for model_type, support in REGISTRY.items() if support.tensorflow)


__all__ = ["REGISTRY", "support_for", "ModelSupport", "FEATURE_TO_AUTOMODEL", "FEATURE_TO_TF_AUTOMODEL", "RotaryDecoderOnnxConfig", "feature_to_task", "tf_features", "tf_model_types"]
