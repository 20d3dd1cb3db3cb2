"""``FeaturesManager``: which (model type, feature) pairs exist and how to load their models.

The support matrix is :data:`hatch_onnx.models.REGISTRY`; this module answers the legacy
questions about it. Loading models is local-only: the Hub is never contacted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

from hatch_onnx.errors import CheckpointError, FrameworkError, UnsupportedFeatureError, UnsupportedModelTypeError
from hatch_onnx.models import FEATURE_TO_AUTOMODEL, FEATURE_TO_TF_AUTOMODEL, REGISTRY, feature_to_task
from hatch_onnx.onnx.config import OnnxConfig
from hatch_onnx.weights import PT_WEIGHTS, TF_WEIGHTS



def _framework_installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


# Attributes that transformers 4.57's TensorFlow classes read but the model type's config lacks,
# per (model type, task): attribute -> the config attribute whose value it gets. TFXLMForMultipleChoice
# and TFFlaubertForMultipleChoice build their logits_proj with ``config.initializer_range``, which
# XLMConfig (and FlaubertConfig, its subclass) never had: they raise AttributeError at build. XLM
# initialises every other weight, the rest of that head included, with N(0, ``config.init_std``):
# the same value. It only draws weights a checkpoint lacks; the graph computes the same either way.
TF_MISSING_CONFIG_ATTRIBUTES: dict[tuple[str, str], dict[str, str]] = {
    ("xlm", "multiple-choice"): {"initializer_range": "init_std"},
    ("flaubert", "multiple-choice"): {"initializer_range": "init_std"},
}

# What each framework's jobs import, and the extra that installs it.
FRAMEWORK_MODULES = {"pt": ("torch",), "tf": ("tensorflow", "tf_keras", "tf2onnx")}
FRAMEWORK_EXTRAS = {"pt": "torch", "tf": "tf"}


def transformers_has_tensorflow() -> bool:
    """Whether the installed transformers still has TensorFlow classes (4.x; 5.0 removed them)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("transformers").split(".")[0]) < 5
    except (PackageNotFoundError, ValueError):
        return False


def require_framework(framework: str) -> None:
    """Raise :class:`FrameworkError` unless ``framework`` is installed and transformers may use it."""
    what = "PyTorch" if framework == "pt" else "TensorFlow"
    missing = [name for name in FRAMEWORK_MODULES[framework] if not _framework_installed(name)]
    if missing:
        raise FrameworkError(
            f"{what} checkpoints need {', '.join(missing)}, not installed: pip install 'hatch-onnx[{FRAMEWORK_EXTRAS[framework]}]'"
        )
    if framework == "tf" and not transformers_has_tensorflow():
        from importlib.metadata import version

        raise FrameworkError(
            f"TensorFlow checkpoints need transformers 4.x (this interpreter has {version('transformers')}, "
            "which dropped TensorFlow): run them with an interpreter that has hatch-onnx[tf] (--python-tf)"
        )
    # transformers settles which frameworks exist when first imported (USE_TF / USE_TORCH)
    if "transformers" in sys.modules:
        import transformers.utils as hf_utils

        available = hf_utils.is_torch_available if framework == "pt" else hf_utils.is_tf_available
        if not available():
            raise FrameworkError(
                f"transformers was imported in this process with {what} turned off (USE_TF / USE_TORCH): "
                f"export {what} checkpoints in a process of their own, as `hatch-onnx build` does"
            )


def isolate_framework(framework: str) -> None:
    """Tell transformers not to import the other framework (it imports every one installed)."""
    if framework == "pt":
        os.environ.setdefault("USE_TF", "0")
        os.environ.setdefault("USE_TORCH", "1")
    else:
        os.environ.setdefault("USE_TORCH", "0")
        os.environ.setdefault("USE_TF", "1")
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf_model.h5 checkpoints need tf-keras
    os.environ.setdefault("USE_FLAX", "0")


def read_model_type(model_dir: Union[str, Path]) -> str:
    """The ``model_type`` of a local checkpoint, read from its config.json without transformers."""
    path = Path(model_dir)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found", path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: missing (a checkpoint needs config.json)", config_file)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        model_type = config.get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{config_file}: not a readable JSON object ({exc})", config_file) from exc
    if config.get("auto_map"):
        # Code shipped with a checkpoint is never run (no trust_remote_code), and transformers'
        # built-in class is not silently put in place of what the checkpoint says it needs.
        named = ", ".join(f"{k}: {v}" for k, v in list(config["auto_map"].items())[:2]) if isinstance(config["auto_map"], dict) else config["auto_map"]
        raise CheckpointError(
            f"{config_file}: auto_map names custom code ({named}); hatch-onnx never runs a checkpoint's own code "
            "(trust_remote_code): export a transformers architecture, or drop auto_map if its built-in class is meant",
            config_file,
        )
    if not isinstance(model_type, str):
        raise CheckpointError(f"{config_file}: no model_type", config_file)
    return model_type


def _tf_config_with_missing_attributes(feature: str, model: str, cache_dir: Optional[str]) -> Any:
    """The checkpoint's config with :data:`TF_MISSING_CONFIG_ATTRIBUTES` set, or None when none apply."""
    path = Path(model)
    if not (path / "config.json").is_file():
        return None
    fixes = TF_MISSING_CONFIG_ATTRIBUTES.get((read_model_type(path).replace("_", "-"), feature_to_task(feature)))
    if not fixes:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, cache_dir=cache_dir, local_files_only=True)
    for name, source in fixes.items():
        if not hasattr(config, name):
            setattr(config, name, getattr(config, source))
    return config


class _Captured(logging.Handler):
    """transformers' log records during a load, kept instead of printed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()).splitlines())

    def mismatches(self) -> list[str]:
        """The report's lines about tensors of the wrong shape, spaces collapsed."""
        return [" ".join(line.replace("|", " ").split()) for line in self.lines if "mismatch" in line.lower()]


class FeaturesManager:
    """The legacy façade over the registry."""

    _TASKS_TO_AUTOMODELS = {task: name for task, name in FEATURE_TO_AUTOMODEL.items()}
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
            raise UnsupportedModelTypeError(
                f"model type {what!r} is not supported; supported: {supported}", model_type
            )
        return dict(FeaturesManager._SUPPORTED_MODEL_TYPE[model_type])

    @staticmethod
    def feature_to_task(feature: str) -> str:
        return feature_to_task(feature)

    @staticmethod
    def _validate_framework_choice(framework: str) -> None:
        if framework not in ("pt", "tf"):
            raise FrameworkError(f"framework must be 'pt' or 'tf', not {framework!r}")

    @staticmethod
    def get_model_class_for_feature(feature: str, framework: str = "pt") -> type:
        task = feature_to_task(feature)
        FeaturesManager._validate_framework_choice(framework)
        table = FeaturesManager._TASKS_TO_AUTOMODELS if framework == "pt" else FeaturesManager._TASKS_TO_TF_AUTOMODELS
        if task not in table:
            raise UnsupportedFeatureError(
                f"unknown feature {feature!r}; possible values: {', '.join(FeaturesManager.AVAILABLE_FEATURES)}", feature=feature
            )
        isolate_framework(framework)
        import transformers

        try:
            return getattr(transformers, table[task])
        except AttributeError as exc:
            raise FrameworkError(f"transformers {transformers.__version__} has no {table[task]} (feature {feature!r})") from exc

    @staticmethod
    def determine_framework(model: str, framework: Optional[str] = None) -> str:
        """User input, else the local checkpoint's own weights (PyTorch when both), else what is installed."""
        if framework is not None:
            FeaturesManager._validate_framework_choice(framework)
            if Path(model).is_dir():
                wanted = PT_WEIGHTS if framework == "pt" else TF_WEIGHTS
                if not any((Path(model) / name).exists() for name in wanted):
                    raise FrameworkError(f"{model}: --framework {framework} but no {' or '.join(wanted[::2])} in the checkpoint")
            return framework
        path = Path(model)
        if path.is_dir():
            if any((path / name).exists() for name in PT_WEIGHTS):
                return "pt"
            if any((path / name).exists() for name in TF_WEIGHTS):
                return "tf"
            raise CheckpointError(f"{model}: no weights ({', '.join(PT_WEIGHTS + TF_WEIGHTS)})", path)
        if _framework_installed("torch"):
            return "pt"
        if _framework_installed("tensorflow"):
            return "tf"
        raise FrameworkError("neither PyTorch nor TensorFlow is installed: pip install 'hatch-onnx[torch]'")

    @staticmethod
    def get_model_from_feature(
        feature: str, model: str, framework: Optional[str] = None, cache_dir: Optional[str] = None
    ) -> Any:
        model_obj, _ = FeaturesManager.load_model(feature, model, framework, cache_dir)
        return model_obj

    @staticmethod
    def load_model(
        feature: str, model: str, framework: Optional[str] = None, cache_dir: Optional[str] = None, dtype: str = "float32"
    ) -> tuple[Any, list[str]]:
        """The model for ``feature`` and the names of weights the checkpoint lacked (a new head).

        ``dtype`` (PyTorch): the precision of the model's weights, whatever the checkpoint stores.
        """
        framework = FeaturesManager.determine_framework(model, framework)
        require_framework(framework)
        model_class = FeaturesManager.get_model_class_for_feature(feature, framework)
        kwargs: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": True, "output_loading_info": True}
        if framework == "pt":
            import torch

            torch.manual_seed(0)  # a new head is random: make it the same random every time
            kwargs["attn_implementation"] = "eager"
            # "dtype" since transformers 4.56 (before: torch_dtype); never "auto": the graph's
            # precision is the build's choice, not the checkpoint file's.
            kwargs["dtype"] = getattr(torch, dtype)
        else:
            import tensorflow as tf

            tf.keras.utils.set_random_seed(0)
        from transformers.utils import logging as hf_logging

        # transformers logs newly initialised weights as a warning; we report them ourselves,
        # as an error unless a new head is allowed (see hatch_onnx.exporting). transformers 5
        # also draws a "Loading weights" progress bar: noise on a one-line-per-job console.
        # transformers 5 writes its load report (which tensors mismatched, and how) as a warning
        # and raises "look at the above report": it is kept here, not printed, for the error.
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        report = _Captured()
        hf_logging.set_verbosity_warning()
        hf_logging.disable_default_handler()
        logging.getLogger("transformers").addHandler(report)  # (transformers' remove_handler asserts the opposite)
        hf_logging.disable_progress_bar()
        try:
            if framework == "tf" and (config := _tf_config_with_missing_attributes(feature, model, cache_dir)) is not None:
                kwargs["config"] = config
            loaded, info = model_class.from_pretrained(model, **kwargs)
        except Exception as exc:  # a truncated file, weights of other shapes, a broken config: bad input
            # The whole message, on one line: transformers puts the useful part (which tensor,
            # which shapes) after the first line, or in its report.
            message = " ".join([*str(exc).split(), *report.mismatches()]) or type(exc).__name__
            raise CheckpointError(f"{model}: cannot load for {feature!r}: {type(exc).__name__}: {message}", model) from exc
        finally:
            logging.getLogger("transformers").removeHandler(report)
            hf_logging.enable_default_handler()
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        missing = sorted(info.get("missing_keys", []))
        return loaded, missing

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
