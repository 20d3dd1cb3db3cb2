"""``export`` and ``validate_model_outputs``: the legacy entry points, over a back-end and the validator.

``export`` hands the model to its framework's back-end (:func:`hatch_onnx.frameworks.backend_of`);
``validate_model_outputs`` draws the validation inputs, runs the reference model and compares
with :func:`hatch_onnx.validation.validate_graph`. Every mismatch raises; nothing is a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Union

from hatch_onnx.config import OnnxConfig
from hatch_onnx.errors import ExportError, OpsetError
from hatch_onnx.validation import Tolerance, reference_outputs, validate_graph, validation_inputs


def export(
    preprocessor: Any,
    model: Any,
    config: OnnxConfig,
    opset: int,
    output: Union[str, Path],
    tokenizer: Any = None,
    device: str = "cpu",
    *,
    exporter: str = "torchscript",
) -> tuple[list[str], list[str]]:
    """Export ``model`` to ``output`` (an ``.onnx`` path); returns the graph's input and output names.

    ``exporter`` names torch's exporter explicitly: ``"torchscript"`` (default; fast, with
    transformers' mask construction patched while tracing) or ``"dynamo"``; TensorFlow models
    always go through tf2onnx. Weights of 1 GiB or more go to ``<output>.data`` beside the graph
    (:func:`hatch_onnx.config.needs_external_data`).
    """
    from hatch_onnx.frameworks import backend_of
    from hatch_onnx.frameworks.exporters import exporter_name

    if device != "cpu":
        raise ExportError(f"device {device!r}: hatch-onnx exports on the CPU only")
    if opset < config.default_onnx_opset:
        raise OpsetError(
            f"opset {opset} is below the minimum {config.default_onnx_opset} for {type(config).__name__}",
            opset=opset,
            minimum=config.default_onnx_opset,
        )
    backend = backend_of(model)
    preprocessor = preprocessor if preprocessor is not None else tokenizer
    return backend.export(preprocessor, model, config, opset, Path(output), exporter=exporter_name(backend.FRAMEWORK, exporter))


def validate_model_outputs(
    config: OnnxConfig,
    preprocessor: Any,
    reference_model: Any,
    onnx_model: Union[str, Path],
    onnx_named_outputs: Iterable[str],
    atol: float,
) -> dict[str, Any]:
    """Raise unless the ONNX graph reproduces ``reference_model``; return the figures.

    Checks, in order: the graph loads, its input and output names against the config's, each
    output's shape, each output's values (max absolute difference <= ``atol``, NaN never
    matches). A float16 model's outputs may also differ by
    :data:`~hatch_onnx.validation.FP16_RTOL` of their size. ``preprocessor`` is not used: the
    validation inputs are drawn from the config, at shapes other than the export's.
    """
    inputs, reference = reference_outputs(reference_model, config, validation_inputs(config))
    return validate_graph(onnx_model, config, inputs, reference, Tolerance(atol=atol), named_outputs=onnx_named_outputs)
