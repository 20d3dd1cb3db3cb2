"""``FeaturesManager``: the legacy questions about the support matrix, answered by the project's modules.

The matrix is :data:`hatch_onnx.models.REGISTRY`; what a checkpoint is comes from
:mod:`hatch_onnx.checkpoints`, and loading it from :mod:`hatch_onnx.loading` (local files only:
the Hub is never contacted, a checkpoint's own code never runs). This class only keeps the
``transformers.onnx`` names and signatures.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from hatch_onnx import checkpoints, loading
from hatch_onnx.config import OnnxConfig
from hatch_onnx.errors import UnsupportedFeatureError, UnsupportedModelTypeError
from hatch_onnx.models import FEATURE_TO_AUTOMODEL, FEATURE_TO_TF_AUTOMODEL, REGISTRY, feature_to_task


class FeaturesManager:
    """The legacy façade over the registry."""

    _TASKS_TO_AUTOMODELS = dict(FEATURE_TO_AUTOMODEL)
    _TASKS_TO_TF_AUTOMODELS = dict(FEATURE_TO_TF_AUTOMODEL)
    _SUPPORTED_MODEL_TYPE = {
        model_type: {feature: support.config_for(feature) for feature in support.features}
        for model_type, support in REGISTRY.items()
    }
    AVAILABLE_FEATURES = sorted({feature for features in _SUPPORTED_MODEL_TYPE.values() for feature in features})

    @staticmethod
    def get_supported_features_for_model_type(model_type: str, model_name: Optional[str] = None) -> dict[str, Callable[..., OnnxConfig]]:
        model_type = model_type.replace("_", "-")
        if model_type not in FeaturesManager._SUPPORTED_MODEL_TYPE:
            what = f"{model_name} ({model_type})" if model_name else model_type
            supported = ", ".join(FeaturesManager._SUPPORTED_MODEL_TYPE)
            raise UnsupportedModelTypeError(f"model type {what!r} is not supported; supported: {supported}", model_type)
        return dict(FeaturesManager._SUPPORTED_MODEL_TYPE[model_type])

    @staticmethod
    def feature_to_task(feature: str) -> str:
        return feature_to_task(feature)

    @staticmethod
    def _validate_framework_choice(framework: str) -> None:
        checkpoints.check_framework_name(framework)

    @staticmethod
    def get_model_class_for_feature(feature: str, framework: str = "pt") -> type:
        return loading.model_class_for_feature(feature, framework)

    @staticmethod
    def determine_framework(model: str, framework: Optional[str] = None) -> str:
        """User input, else the local checkpoint's own weights (PyTorch when both), else what is installed."""
        return checkpoints.determine_framework(model, framework)

    @staticmethod
    def get_model_from_feature(feature: str, model: str, framework: Optional[str] = None, cache_dir: Optional[str] = None) -> Any:
        model_obj, _ = loading.load_model(feature, model, framework, cache_dir)
        return model_obj

    @staticmethod
    def load_model(feature: str, model: str, framework: Optional[str] = None, cache_dir: Optional[str] = None,
                   dtype: str = "float32") -> tuple[Any, list[str]]:
        """The model for ``feature`` and the names of weights the checkpoint lacked (see :func:`hatch_onnx.loading.load_model`)."""
        return loading.load_model(feature, model, framework, cache_dir, dtype)

    @staticmethod
    def check_supported_model_or_raise(model: Any, feature: str = "default") -> tuple[str, Callable[..., OnnxConfig]]:
        model_type = model.config.model_type.replace("_", "-")
        model_name = getattr(model, "name", "")
        features = FeaturesManager.get_supported_features_for_model_type(model_type, model_name=model_name)
        if feature not in features:
            raise UnsupportedFeatureError(
                f"{model.config.model_type} doesn't support feature {feature!r}; supported: {', '.join(features)}",
                model_type=model_type,
                feature=feature,
            )
        return model.config.model_type, features[feature]

    @staticmethod
    def get_config(model_type: str, feature: str) -> Callable[..., OnnxConfig]:
        features = FeaturesManager.get_supported_features_for_model_type(model_type)
        if feature not in features:
            raise UnsupportedFeatureError(
                f"{model_type} doesn't support feature {feature!r}; supported: {', '.join(features)}",
                model_type=model_type,
                feature=feature,
            )
        return features[feature]
