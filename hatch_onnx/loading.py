"""Loading a checkpoint's model and preprocessor for one feature: local files only, no side effects.

- The Hub is never contacted (``local_files_only``) and a checkpoint's own code never runs
  (``trust_remote_code=False``; :func:`hatch_onnx.checkpoints.read_model_type` refuses
  ``auto_map`` before anything loads).
- A head the checkpoint lacks is initialised from a fixed seed, so that the same export gives
  the same bytes; the process's random state is restored afterwards (:func:`_seeded`).
- transformers' log records during a load are captured (:func:`_captured_logs`), not printed;
  its verbosity and progress bars are restored afterwards.

Heavy: imports transformers and the framework inside the functions; light at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

from hatch_onnx.checkpoints import check_framework_name, determine_framework, read_model_type, require_framework
from hatch_onnx.errors import CheckpointError, FrameworkError, UnsupportedFeatureError
from hatch_onnx.frameworks.env import isolate
from hatch_onnx.models import FEATURE_TO_AUTOMODEL, FEATURE_TO_TF_AUTOMODEL, REGISTRY, feature_to_task

# (feature, checkpoint, framework, cache_dir, dtype) -> (model, names of weights the checkpoint lacked)
ModelLoader = Callable[[str, str, str, Optional[str], str], tuple[Any, list[str]]]
DTYPES = ("float32", "float16")


@dataclasses.dataclass
class Held:
    """A loaded model, held by one reference, that is let go of while onnxruntime holds its graph and loaded again after.

    A model whose graph needs external data (:func:`hatch_onnx.config.needs_external_data`: over
    a GiB of weights) is let go of (:meth:`release`) once the one-step check's reference outputs
    are computed and before onnxruntime opens the graph: onnxruntime's session holds its own copy
    of the weights, and the two together would double the peak (measured: 2.35x the weights on a
    0.5B decoder). A generation check needs the model once more, after the graph has decoded and
    its session is closed (:mod:`hatch_onnx.generation`): :meth:`again` loads it again
    (memory-mapped weights still in the page cache: 0.06 s for a 0.5B decoder on transformers 5).
    Exports (:class:`hatch_onnx.exporting.Loaded`) and variants (:mod:`hatch_onnx.variants`) hold their model so.
    """

    model: Any
    reload: Callable[[], Any]

    def release(self, loader_release: Callable[[], Any]) -> None:
        import gc

        self.model = None
        loader_release()
        gc.collect()  # transformers' models hold reference cycles: free their weights now, not at some later collection

    def again(self) -> Any:
        """The model, loaded again if it was released."""
        if self.model is None:
            self.model = self.reload()
        return self.model


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
# The seed of heads a checkpoint lacks.
NEW_HEAD_SEED = 0


def model_class_for_feature(feature: str, framework: str = "pt") -> type:
    """transformers' auto class for ``feature`` in ``framework`` (imports transformers, that framework only)."""
    task = feature_to_task(feature)
    check_framework_name(framework)
    table = FEATURE_TO_AUTOMODEL if framework == "pt" else FEATURE_TO_TF_AUTOMODEL
    if task not in table:
        available = sorted({f for support in REGISTRY.values() for f in support.features})
        raise UnsupportedFeatureError(f"unknown feature {feature!r}; possible values: {', '.join(available)}", feature=feature)
    isolate(framework)
    import transformers

    try:
        return getattr(transformers, table[task])
    except AttributeError as exc:
        raise FrameworkError(f"transformers {transformers.__version__} has no {table[task]} (feature {feature!r})") from exc


def load_model(feature: str, model: str, framework: Optional[str] = None, cache_dir: Optional[str] = None,
               dtype: str = "float32") -> tuple[Any, list[str]]:
    """The model for ``feature`` and the names of weights the checkpoint lacked (a new head).

    ``dtype`` (PyTorch): the precision of the model's weights, whatever the checkpoint stores.
    """
    framework = determine_framework(model, framework)
    require_framework(framework)
    model_class = model_class_for_feature(feature, framework)
    kwargs: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": True, "output_loading_info": True,
                              "trust_remote_code": False}
    if framework == "pt":
        import torch

        kwargs["attn_implementation"] = "eager"
        # "dtype" since transformers 4.56 (before: torch_dtype); never "auto": the graph's
        # precision is the build's choice, not the checkpoint file's.
        kwargs["dtype"] = getattr(torch, dtype)
    elif (config := _tf_config_with_missing_attributes(feature, model, cache_dir)) is not None:
        kwargs["config"] = config
    with _seeded(framework), _captured_logs() as report:
        try:
            loaded, info = model_class.from_pretrained(model, **kwargs)
        except Exception as exc:  # a truncated file, weights of other shapes, a broken config: bad input
            # The whole message, on one line: transformers puts the useful part (which tensor,
            # which shapes) after the first line, or in its report.
            message = " ".join([*str(exc).split(), *report.mismatches()]) or type(exc).__name__
            raise CheckpointError(f"{model}: cannot load for {feature!r}: {type(exc).__name__}: {message}", model) from exc
    return loaded, sorted(info.get("missing_keys", []))


def load_preprocessor(kind: str, model_dir: Path) -> Any:
    """The named preprocessor; ``auto`` loads none (dummy inputs come from the model config)."""
    if kind == "auto":
        return None
    import transformers

    loader = {
        "tokenizer": transformers.AutoTokenizer,
        "feature_extractor": transformers.AutoFeatureExtractor,
        "processor": transformers.AutoProcessor,
    }[kind]
    return loader.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)


def _tf_config_with_missing_attributes(feature: str, model: str, cache_dir: Optional[str]) -> Any:
    """The checkpoint's config with :data:`TF_MISSING_CONFIG_ATTRIBUTES` set, or None when none apply."""
    path = Path(model)
    if not (path / "config.json").is_file():
        return None
    fixes = TF_MISSING_CONFIG_ATTRIBUTES.get((read_model_type(path).replace("_", "-"), feature_to_task(feature)))
    if not fixes:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, cache_dir=cache_dir, local_files_only=True, trust_remote_code=False)
    for name, source in fixes.items():
        if not hasattr(config, name):
            setattr(config, name, getattr(config, source))
    return config


@contextlib.contextmanager
def _seeded(framework: str) -> Iterator[None]:
    """Draw a new head from :data:`NEW_HEAD_SEED`, and leave the process's random state as it was."""
    if framework == "pt":
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(NEW_HEAD_SEED)
            yield
        return
    import random

    import numpy as np
    import tensorflow as tf
    from tensorflow.python.eager import context

    saved = random.getstate(), np.random.get_state(), context.global_seed()
    tf.keras.utils.set_random_seed(NEW_HEAD_SEED)  # Keras initialisers draw from all three
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        tf.random.set_seed(saved[2])


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


@contextlib.contextmanager
def _captured_logs() -> Iterator[_Captured]:
    """transformers' warnings kept in a :class:`_Captured`, its console output off; all restored after.

    transformers logs newly initialised weights as a warning; we report them ourselves, as an
    error unless a new head is allowed (see :mod:`hatch_onnx.exporting`). transformers 5 also
    draws a "Loading weights" progress bar (noise on a one-line-per-job console) and writes its
    load report (which tensors mismatched, and how) as a warning before raising "look at the
    above report": it is kept here for the error.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    report = _Captured()
    hf_logging.set_verbosity_warning()
    hf_logging.disable_default_handler()
    logging.getLogger("transformers").addHandler(report)  # (transformers' remove_handler asserts the opposite)
    hf_logging.disable_progress_bar()
    try:
        yield report
    finally:
        logging.getLogger("transformers").removeHandler(report)
        hf_logging.enable_default_handler()
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
