"""What a local checkpoint is, read without loading it: its model type, its framework, its policy.

Everything here is cheap and light (the standard library and the registry's metadata): it runs
before any model loads, so bad input is refused in one line with exit 2. The policy on
checkpoints lives here: code shipped with a checkpoint is never run (:func:`read_model_type`
refuses ``auto_map``), and the framework is the one whose weights the checkpoint holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Union

from hatch_onnx.errors import CheckpointError, FrameworkError
from hatch_onnx.toolchain import transformers_major
from hatch_onnx.weights import PT_WEIGHTS, TF_WEIGHTS

FRAMEWORKS = ("pt", "tf")
# What inference needs beside the graph: the model config and the preprocessor's files, copied
# into every folder the project writes so that a consumer opens it with the folder alone.
SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "spm.model", "preprocessor_config.json", "processor_config.json", "feature_extractor_config.json",
    "image_processor_config.json", "normalizer.json", "chat_template.jinja",
)
# What each framework's jobs import, and the extra that installs it.
FRAMEWORK_MODULES = {"pt": ("torch",), "tf": ("tensorflow", "tf_keras", "tf2onnx")}
FRAMEWORK_EXTRAS = {"pt": "torch", "tf": "tf"}


def side_files(checkpoint: Path) -> list[Path]:
    """The checkpoint's :data:`SIDE_FILES` that exist."""
    return [checkpoint / name for name in SIDE_FILES if (checkpoint / name).is_file()]


def framework_installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


def transformers_has_tensorflow() -> bool:
    """Whether the installed transformers still has TensorFlow classes (4.x; 5.0 removed them)."""
    major = transformers_major()
    return major is not None and major < 5


def check_framework_name(framework: str) -> None:
    if framework not in FRAMEWORKS:
        raise FrameworkError(f"framework must be 'pt' or 'tf', not {framework!r}")


def require_framework(framework: str) -> None:
    """Raise :class:`FrameworkError` unless ``framework`` is installed and transformers may use it."""
    what = "PyTorch" if framework == "pt" else "TensorFlow"
    missing = [name for name in FRAMEWORK_MODULES[framework] if not framework_installed(name)]
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
    refuse_custom_code(path, config)
    if not isinstance(model_type, str):
        raise CheckpointError(f"{config_file}: no model_type", config_file)
    return model_type


# Every JSON file transformers' loaders read (the model's config, and those of the tokenizer,
# feature extractor, image processor and processor): each may name code through ``auto_map``.
CODE_NAMING_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                     "feature_extractor_config.json", "image_processor_config.json", "video_preprocessor_config.json")


def refuse_custom_code(checkpoint: Path, config: Optional[dict] = None) -> None:
    """:class:`CheckpointError` if any file a loader reads names custom code (``auto_map``), at any depth.

    Code shipped with a checkpoint is never run: every ``from_pretrained`` passes
    ``trust_remote_code=False``, and a checkpoint that needs its code is refused here, in one
    line, before anything loads (nested sub-configs included: ``text_config``, ``vision_config``,
    ``encoder``, ``decoder``). transformers' built-in class is never silently put in its place.
    """
    for name in CODE_NAMING_FILES:
        file = checkpoint / name
        if name == "config.json" and config is not None:
            data = config
        elif file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{file}: not a readable JSON object ({exc})", file) from exc
        else:
            continue
        found = _auto_map(data, ())
        if found is not None:
            where, value = found
            named = ", ".join(f"{k}: {v}" for k, v in list(value.items())[:2]) if isinstance(value, dict) else str(value)
            key = ".".join((*where, "auto_map"))
            raise CheckpointError(
                f"{file}: {key} names custom code ({named}); hatch-onnx never runs a checkpoint's own code "
                "(trust_remote_code): export a transformers architecture, or drop auto_map if its built-in class is meant",
                file,
            )


def _auto_map(data: object, where: tuple[str, ...], depth: int = 0) -> Optional[tuple[tuple[str, ...], object]]:
    """The first non-empty ``auto_map`` in ``data`` (with the keys leading to it), or None."""
    if not isinstance(data, dict) or depth > 32:  # deeper than any config nests: not a config
        return None
    if data.get("auto_map"):
        return where, data["auto_map"]
    for key, value in data.items():
        found = _auto_map(value, (*where, str(key)), depth + 1)
        if found is not None:
            return found
    return None


def determine_framework(model: str, framework: Optional[str] = None) -> str:
    """User input, else the local checkpoint's own weights (PyTorch when both), else what is installed."""
    path = Path(model)
    if framework is not None:
        check_framework_name(framework)
        if path.is_dir():
            wanted = PT_WEIGHTS if framework == "pt" else TF_WEIGHTS
            if not any((path / name).exists() for name in wanted):
                raise FrameworkError(f"{model}: --framework {framework} but no {' or '.join(wanted[::2])} in the checkpoint")
        return framework
    if path.is_dir():
        if any((path / name).exists() for name in PT_WEIGHTS):
            return "pt"
        if any((path / name).exists() for name in TF_WEIGHTS):
            return "tf"
        raise CheckpointError(f"{model}: no weights ({', '.join(PT_WEIGHTS + TF_WEIGHTS)})", path)
    if framework_installed("torch"):
        return "pt"
    if framework_installed("tensorflow"):
        return "tf"
    raise FrameworkError("neither PyTorch nor TensorFlow is installed: pip install 'hatch-onnx[torch]'")
