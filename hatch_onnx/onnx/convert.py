"""``export`` and ``validate_model_outputs``: the legacy entry points, strict and seeded.

Validation runs the reference model and onnxruntime on inputs whose batch, sequence, choice
and cache lengths all differ from the export's, so a dynamic axis that the exporter froze
fails here. Every mismatch raises; nothing is a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from hatch_onnx.errors import AtolError, ExportError, InputMismatchError, OpsetError, OutputMismatchError, ShapeError
from hatch_onnx.onnx.config import OnnxConfig, OnnxConfigWithPast

# Validation shapes: each one more than the export's (which are 2 / 8 / 4 / 4 by default).
VALIDATION_BATCH_DELTA = 1
VALIDATION_SEQUENCE_DELTA = 3
VALIDATION_PAST_DELTA = 3
# Decoders that take position_ids are validated with the last row padded on the left by this many.
VALIDATION_LEFT_PADDING = 2
# float16 graphs are compared with the float16 model, which computes in other kernels: outputs
# agree to some units in the last place of float16 (2**-10 of the activations), not to 1e-5.
FP16_ATOL = 1e-3
FP16_RTOL = 1e-2


def _torch_loaded_and_module(model: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _framework_of(model: Any) -> str:
    return "pt" if _torch_loaded_and_module(model) else "tf"


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
    transformers' mask construction patched while tracing) or ``"dynamo"``. Parameters beyond
    2 GiB go to ``<output>.data`` beside the graph.
    """
    if device != "cpu":
        raise ExportError(f"device {device!r}: hatch-onnx exports on the CPU only")
    if opset < config.default_onnx_opset:
        raise OpsetError(
            f"opset {opset} is below the minimum {config.default_onnx_opset} for {type(config).__name__}",
            opset=opset,
            minimum=config.default_onnx_opset,
        )
    output = Path(output)
    preprocessor = preprocessor if preprocessor is not None else tokenizer
    if _framework_of(model) == "tf":
        from hatch_onnx.frameworks.tensorflow import export_tensorflow

        return export_tensorflow(preprocessor, model, config, opset, output)

    from hatch_onnx.frameworks import pytorch

    dummy = pytorch.in_model_precision(config.generate_dummy_inputs(preprocessor, framework="pt"), model)
    _check_input_names(config, list(dummy), "the dummy inputs")
    return pytorch.export_pytorch(model, config, opset, output, dummy, exporter=exporter)


def _check_input_names(config: OnnxConfig, names: list[str], what: str) -> None:
    """The graph's inputs are the config's, in its order: never what a preprocessor happens to return."""
    expected = list(config.inputs)
    if names != expected:
        raise InputMismatchError(f"inputs differ: the config names {expected}, {what} have {names}", value=names)


def save_with_external_data(source: Path, target: Path) -> None:
    """Rewrite the graph at ``source`` to ``target`` with all weights in ``target.name + '.data'``."""
    import onnx

    model = onnx.load(str(source), load_external_data=True)
    data_name = target.name + ".data"
    if (target.parent / data_name).exists():
        (target.parent / data_name).unlink()
    onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=0)


def _validation_inputs(config: OnnxConfig, preprocessor: Any) -> Mapping[str, Any]:
    kwargs: dict[str, Any] = {
        "batch_size": config.default_batch_size + VALIDATION_BATCH_DELTA,
        "seq_length": config.default_sequence_length + VALIDATION_SEQUENCE_DELTA,
        "num_choices": config.default_num_choices + 1,
    }
    if isinstance(config, OnnxConfigWithPast):
        kwargs["past_length"] = config.PAST_SEQUENCE + VALIDATION_PAST_DELTA
        kwargs["left_padding"] = VALIDATION_LEFT_PADDING
    # Values come from the config's seeded generator, not the preprocessor: random token ids
    # exercise the embeddings far more than the legacy "[UNK] [UNK] ..." text did.
    saved_seed = config.DUMMY_SEED
    config.DUMMY_SEED = saved_seed + 1  # values different from the export's, same every run
    try:
        return config.generate_dummy_inputs(None, framework=None, **kwargs)
    finally:
        config.DUMMY_SEED = saved_seed


def validate_model_outputs(
    config: OnnxConfig,
    preprocessor: Any,
    reference_model: Any,
    onnx_model: Union[str, Path],
    onnx_named_outputs: Iterable[str],
    atol: float,
) -> dict[str, Any]:
    """Raise unless the ONNX graph reproduces ``reference_model``; return the figures.

    Checks, in order: the graph's output names against the config's, each output's shape, each
    output's values (max absolute difference <= ``atol``, NaN never matches). A float16 model's
    outputs may also differ by :data:`FP16_RTOL` of their size.
    """
    import numpy as np
    import onnxruntime

    inputs = _validation_inputs(config, preprocessor)
    framework = _framework_of(reference_model)
    if framework == "pt":
        from hatch_onnx.frameworks.pytorch import in_model_precision, run_reference

        inputs = in_model_precision(inputs, reference_model)
    else:
        from hatch_onnx.frameworks.tensorflow import run_reference
    reference = run_reference(reference_model, config, inputs)

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # Validation runs each graph once: no packed second copy of every MatMul weight (which would
    # put a real-size model's peak memory at three times its weights and more).
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        session = onnxruntime.InferenceSession(str(onnx_model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types; the graph itself is at fault
        raise ExportError(f"the exported graph does not load in onnxruntime: {str(exc).splitlines()[0]}") from exc
    _check_input_names(config, [node.name for node in session.get_inputs()], "the graph's inputs")
    feed = {name: np.asarray(value) for name, value in config.generate_dummy_inputs_onnxruntime(inputs).items()}
    graph_outputs = [node.name for node in session.get_outputs()]
    expected = list(config.outputs)
    named = list(onnx_named_outputs)
    if graph_outputs != expected or named != expected:
        raise OutputMismatchError(
            f"outputs differ: the config names {expected}, the graph has {graph_outputs}", output=None, value=graph_outputs
        )
    try:
        results = dict(zip(graph_outputs, session.run(graph_outputs, feed)))
    except Exception as exc:  # e.g. an axis the exporter froze rejects the validation shapes
        shapes = {name: list(value.shape) for name, value in feed.items()}
        raise ShapeError(f"the graph rejects inputs of shapes {shapes}: {str(exc).splitlines()[0]}", value=shapes) from exc

    report_outputs: dict[str, Any] = {}
    for name in expected:
        ref, got = np.asarray(reference[name]), np.asarray(results[name])
        if ref.shape != got.shape:
            raise ShapeError(f"output {name!r}: shape {list(got.shape)} from ONNX, {list(ref.shape)} from the reference model", output=name, value=(got.shape, ref.shape))
        shape = list(ref.shape)
        ref, got = compared_values(config, inputs, name, ref, got)
        rtol = FP16_RTOL if ref.dtype == np.float16 else 0.0
        if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
            diff = excess = float(np.max(ref != got)) if ref.size else 0.0  # integers: exact
        else:
            with np.errstate(invalid="ignore"):
                delta = np.abs(ref.astype(np.float64) - got.astype(np.float64))
            if np.isnan(ref).any():  # seeded random inputs never should; a leaked placeholder does
                raise AtolError(f"output {name!r}: the reference model produced NaN", output=name, value=float("nan"))
            nan_mismatch = np.isnan(ref) != np.isnan(got)
            diff = float("inf") if nan_mismatch.any() else float(np.nanmax(delta)) if ref.size else 0.0
            # float16: rounding errors scale with the activations behind each value, so the slack
            # is relative to the output's largest magnitude (not to each value, as allclose's is)
            slack = rtol * float(np.nanmax(np.abs(ref))) if rtol and ref.size else 0.0
            excess = diff - slack
        if not excess <= atol:
            also = f" + {rtol:g} x max |reference|" if rtol else ""
            raise AtolError(f"output {name!r}: max abs diff {diff:.3g} exceeds atol {atol:g}{also}", output=name, value=diff)
        report_outputs[name] = {"shape": shape, "max_abs_diff": diff, "atol": atol, **({"rtol": rtol} if rtol else {})}
    return {
        "atol": atol,
        "graph": {
            "inputs": [_describe(node) for node in session.get_inputs()],
            "outputs": [_describe(node) for node in session.get_outputs()],
        },
        "inputs": {name: list(np.asarray(value).shape) for name, value in feed.items()},
        "outputs": report_outputs,
    }


def compared_values(config: OnnxConfig, inputs: Mapping[str, Any], name: str, reference: Any, result: Any) -> tuple[Any, Any]:
    """Output ``name`` of the reference and of the graph, at the positions validation compares.

    Every position but the padded query positions of outputs over ``(batch, sequence)``
    (:meth:`OnnxConfig.padded_positions`), which are then flattened to ``(positions, ...)``.
    """
    padded = config.padded_positions(inputs)
    if padded is None or not padded.any() or config.outputs[name].get(1) != "sequence" or reference.shape[:2] != padded.shape:
        return reference, result
    return reference[~padded], result[~padded]


def _describe(node: Any) -> dict[str, Any]:
    """An onnxruntime input/output as plain data: name, dtype, shape with named dynamic axes."""
    dtype = node.type[len("tensor("):-1] if node.type.startswith("tensor(") else node.type
    return {"name": node.name, "dtype": dtype, "shape": list(node.shape)}
