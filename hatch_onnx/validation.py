"""The one validator: does an ONNX graph reproduce its reference model?

Every graph the project ships passes through :func:`validate_graph`: exports (through
:func:`hatch_onnx.onnx.convert.validate_model_outputs` and :mod:`hatch_onnx.exporting`) and their
variants (:mod:`hatch_onnx.variants`). It owns, once:

- the validation draw (:func:`validation_inputs`): seeded inputs whose batch, sequence, choice
  and cache lengths all differ from the export's, so that a dynamic axis the exporter froze
  fails here, with a left-padded row for decoders that take ``position_ids``;
- the load-failure path (:func:`open_session`): a graph onnxruntime refuses is an
  :class:`~hatch_onnx.errors.ExportError`;
- the interface checks: input and output names in the config's order
  (:class:`~hatch_onnx.errors.InputMismatchError`, :class:`~hatch_onnx.errors.OutputMismatchError`);
- the comparison of each output: a shape that differs is a :class:`~hatch_onnx.errors.ShapeError`,
  values outside the :class:`Tolerance` an :class:`~hatch_onnx.errors.AtolError`; positions that
  are padding are not compared (:func:`compared_values`); NaN never matches.

Light at import: numpy and onnxruntime are imported by the functions that use them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from hatch_onnx.config import DummySpec, OnnxConfig, OnnxConfigWithPast, check_input_names
from hatch_onnx.errors import AtolError, ExportError, OutputMismatchError, ShapeError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# Validation shapes: each one more than the export's (which are 2 / 8 / 4 / 4 by default).
VALIDATION_BATCH_DELTA = 1
VALIDATION_SEQUENCE_DELTA = 3
VALIDATION_PAST_DELTA = 3
# Decoders that take position_ids are validated with the last row padded on the left by this many.
VALIDATION_LEFT_PADDING = 2
# The validation draw's seed is the export's plus this: other values, the same every run.
VALIDATION_SEED_OFFSET = 1
# float16 graphs are compared with the float16 model, which computes in other kernels: outputs
# agree to some units in the last place of float16 (2**-10 of the activations), not to 1e-5.
FP16_ATOL = 1e-3
FP16_RTOL = 1e-2


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How close a graph's outputs must be to the reference's: an ``atol`` or a cosine floor.

    With ``atol``, each output's max absolute difference must stay within it; a float16
    reference output also gets :data:`FP16_RTOL` of its largest magnitude as slack, since
    rounding errors scale with the activations behind each value (not with each value, as
    ``allclose``'s relative term does). With ``min_cosine`` (lossy variants: int8, fp16), each
    output's cosine similarity to the reference must reach it.
    """

    atol: Optional[float] = None
    min_cosine: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.atol is None) == (self.min_cosine is None):
            raise ValueError("a Tolerance has either an atol or a min_cosine")


def validation_spec(config: OnnxConfig) -> DummySpec:
    """The validation draw's parameters for ``config`` (see the module's docstring)."""
    with_past = isinstance(config, OnnxConfigWithPast)
    # A graph whose attention takes a sequence over a past for one row only declares the batch it
    # takes (onnxruntime's CPU GroupQueryAttention: hatch_onnx.genai_builder); its batched prefill and
    # steps are validated by generation.
    batch = getattr(config, "PAST_CONTINUATION_BATCH", None) if with_past else None
    return DummySpec(
        batch_size=batch or config.default_batch_size + VALIDATION_BATCH_DELTA,
        seq_length=config.default_sequence_length + VALIDATION_SEQUENCE_DELTA,
        num_choices=config.default_num_choices + 1,
        seed=config.DUMMY_SEED + VALIDATION_SEED_OFFSET,
        past_length=config.PAST_SEQUENCE + VALIDATION_PAST_DELTA if with_past else None,
        left_padding=VALIDATION_LEFT_PADDING if with_past else 0,
    )


def validation_inputs(config: OnnxConfig) -> Mapping[str, Any]:
    """The validation draw as numpy arrays.

    Values come from the config's seeded generator, not a preprocessor: random token ids
    exercise the embeddings far more than the legacy "[UNK] [UNK] ..." text did.
    """
    return config.dummy_inputs(None, validation_spec(config))


def reference_outputs(model: Any, config: OnnxConfig, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(inputs in the model's precision, the model's outputs on them)``, through its framework's back-end."""
    from hatch_onnx.frameworks import backend_of

    backend = backend_of(model)
    inputs = backend.to_model_precision(inputs, model)
    return inputs, backend.run_reference(model, config, inputs)


def open_session(graph: Union[str, Path], what: str = "the exported graph", weights: Optional[Mapping[str, Any]] = None) -> Any:
    """An onnxruntime session of ``graph``; a graph it refuses is an :class:`ExportError`.

    ``weights`` (name -> numpy array) are initializers of the graph the session reads where they
    are, in place of the graph's data file: the arrays an exporter wrote that file from
    (:class:`hatch_onnx.fused.Built`). onnxruntime does not copy them (``add_initializer``: a
    0.5B decoder's session opened in 0.05 s at 1.0x its weights; ``add_external_initializers``
    copied them, 5.8 s and 2x), so the model and its graph share one copy of the weights, and
    the file, just written, is not read back.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # Validation runs each graph once: no packed second copy of every MatMul weight (which would
    # put a real-size model's peak memory at three times its weights and more).
    options.add_session_config_entry("session.disable_prepacking", "1")
    if _large_half(Path(graph)):
        # CPU onnxruntime has no float16 kernel for most ops: it casts each float16 weight to
        # float32, and its optimiser folds those casts into float32 copies of every weight when
        # the session opens (2x the weights: 32 GB for an 8B model). Unoptimised, the casts run
        # at run time; the default order runs them all before the first MatMul and the arena
        # keeps what they allocated (an 8B model peaked at 1.52x its weights, a 256 MB graph at
        # 7.5x). In priority order, without the arena, each cast's output lives until its
        # MatMul has run: one weight in float32 at a time (the 256 MB graph: 1.5x, and faster).
        # The graph's arithmetic is the same.
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
        options.enable_cpu_mem_arena = False
    values = [onnxruntime.OrtValue.ortvalue_from_numpy(array) for array in (weights or {}).values()]
    for name, value in zip(weights or {}, values):
        options.add_initializer(name, value)
    try:
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types; the graph itself is at fault
        raise ExportError(f"{what} does not load in onnxruntime: {str(exc).splitlines()[0]}") from exc
    session.hatch_onnx_weights = values  # onnxruntime reads them in place: they live as long as the session
    return session


def _large_half(graph: Path) -> bool:
    """Whether ``graph`` has external data (``<graph>.data``: over a GiB of weights) and float16 weights."""
    if not graph.with_name(graph.name + ".data").is_file():
        return False
    import onnx

    proto = onnx.load(str(graph), load_external_data=False)  # the graph's structure only: its weights stay on disk
    return any(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in proto.graph.initializer)


def describe(node: Any) -> dict[str, Any]:
    """An onnxruntime input/output as plain data: name, dtype, shape with named dynamic axes."""
    dtype = node.type[len("tensor("):-1] if node.type.startswith("tensor(") else node.type
    return {"name": node.name, "dtype": dtype, "shape": list(node.shape)}


def validate_graph(
    graph: Union[str, Path],
    config: OnnxConfig,
    inputs: Mapping[str, Any],
    reference: Mapping[str, Any],
    tolerance: Tolerance,
    named_outputs: Optional[Iterable[str]] = None,
    label: str = "",
    session: Any = None,
) -> dict[str, Any]:
    """Raise unless the graph at ``graph`` reproduces ``reference`` on ``inputs``; return the figures.

    Checks, in order: that the graph loads, its input and output names (and ``named_outputs``,
    what the exporter said it wrote) against the config's, that it runs on ``inputs``, then each
    output's shape and values. ``label`` (a variant's name) starts every error message.
    ``session``: the graph's, already open (:func:`open_session`), to share with the generation check.
    """
    import numpy as np

    session = session or open_session(graph, f"{label} graph" if label else "the exported graph")
    check_input_names(config, [node.name for node in session.get_inputs()], "the graph's inputs")
    graph_outputs = [node.name for node in session.get_outputs()]
    expected = list(config.outputs)
    if graph_outputs != expected or (named_outputs is not None and list(named_outputs) != expected):
        raise OutputMismatchError(
            f"outputs differ: the config names {expected}, the graph has {graph_outputs}", output=None, value=graph_outputs
        )
    feed = _feed(session, config, inputs)
    try:
        results = dict(zip(graph_outputs, session.run(graph_outputs, feed)))
    except Exception as exc:  # e.g. an axis the exporter froze rejects the validation shapes
        shapes = {name: list(value.shape) for name, value in feed.items()}
        raise ShapeError(f"the graph rejects inputs of shapes {shapes}: {str(exc).splitlines()[0]}", value=shapes) from exc
    prefix = f"{label}: " if label else ""
    figures = {name: compare_output(config, inputs, name, np.asarray(reference[name]), np.asarray(results[name]), tolerance, prefix)
               for name in expected}
    report: dict[str, Any] = {"atol": tolerance.atol} if tolerance.atol is not None else {}
    report.update({
        "graph": {
            "inputs": [describe(node) for node in session.get_inputs()],
            "outputs": [describe(node) for node in session.get_outputs()],
        },
        "inputs": {name: list(value.shape) for name, value in feed.items()},
        "outputs": figures,
    })
    return report


def _feed(session: Any, config: OnnxConfig, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """onnxruntime's inputs: floating values in the precision each graph input declares (an fp16 variant's)."""
    import numpy as np

    wanted = {node.name: node.type for node in session.get_inputs()}
    feed = {}
    for name, value in config.generate_dummy_inputs_onnxruntime(inputs).items():
        value = np.asarray(value)
        if value.dtype.kind == "f" and wanted.get(name) in _FLOAT_TYPES:
            value = value.astype(_FLOAT_TYPES[wanted[name]])
        feed[name] = value
    return feed


_FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


def compare_output(config: OnnxConfig, inputs: Mapping[str, Any], name: str, reference: "np.ndarray", result: "np.ndarray",
                   tolerance: Tolerance, prefix: str = "") -> dict[str, Any]:
    """One output's figures; raises :class:`ShapeError` or :class:`AtolError` when it does not match."""
    import numpy as np

    if reference.shape != result.shape:
        raise ShapeError(f"{prefix}output {name!r}: shape {list(result.shape)} from ONNX, {list(reference.shape)} from the "
                         "reference model", output=name, value=(result.shape, reference.shape))
    figures: dict[str, Any] = {"shape": list(reference.shape)}
    reference, result = compared_values(config, inputs, name, reference, result)
    exact = reference.dtype == bool or np.issubdtype(reference.dtype, np.integer)
    if not exact and np.isnan(reference).any():  # seeded random inputs never should; a leaked placeholder does
        raise AtolError(f"{prefix}output {name!r}: the reference model produced NaN", output=name, value=float("nan"))
    diff = _max_abs_diff(reference, result, exact)
    figures["max_abs_diff"] = diff
    if tolerance.min_cosine is not None:
        cosine = _cosine(reference.astype(np.float64), result.astype(np.float64))
        figures.update(cosine=cosine, min_cosine=tolerance.min_cosine)
        if not cosine >= tolerance.min_cosine:
            raise AtolError(f"{prefix}output {name!r}: cosine {cosine:.4f} below {tolerance.min_cosine:g} (max abs diff {diff:.3g})",
                            output=name, value=cosine)
        return figures
    atol = tolerance.atol
    rtol = FP16_RTOL if reference.dtype == np.float16 else 0.0
    slack = rtol * float(np.nanmax(np.abs(reference))) if rtol and reference.size else 0.0
    if not diff - slack <= atol:
        also = f" + {rtol:g} x max |reference|" if rtol else ""
        raise AtolError(f"{prefix}output {name!r}: max abs diff {diff:.3g} exceeds atol {atol:g}{also}", output=name, value=diff)
    figures["atol"] = atol
    if rtol:
        figures["rtol"] = rtol
    return figures


def _max_abs_diff(reference: "np.ndarray", result: "np.ndarray", exact: bool) -> float:
    """The largest absolute difference; integers and booleans: 1.0 if any differs; a NaN in one only: inf."""
    import numpy as np

    if not reference.size:
        return 0.0
    if exact:
        return float(np.max(reference != result))
    with np.errstate(invalid="ignore"):
        delta = np.abs(reference.astype(np.float64) - result.astype(np.float64))
    if (np.isnan(reference) != np.isnan(result)).any():
        return float("inf")
    return float(np.nanmax(delta))


def compared_values(config: OnnxConfig, inputs: Mapping[str, Any], name: str, reference: Any, result: Any) -> tuple[Any, Any]:
    """Output ``name`` of the reference and of the graph, at the positions validation compares.

    Every position but the padded query positions of outputs over ``(batch, sequence)``
    (:meth:`OnnxConfig.padded_positions`), which are then flattened to ``(positions, ...)``:
    no one reads them, and a padded query attends to nothing, which kernels resolve differently.
    """
    padded = config.padded_positions(inputs)
    if padded is None or not padded.any() or config.outputs[name].get(1) != "sequence" or reference.shape[:2] != padded.shape:
        return reference, result
    return reference[~padded], result[~padded]


def _cosine(a: "np.ndarray", b: "np.ndarray") -> float:
    import numpy as np

    a, b = a.ravel(), b.ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)
