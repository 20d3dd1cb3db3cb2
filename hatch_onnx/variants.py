"""Optimised and quantised variants of an export, validated against the original model.

======  =====================================================================================
o1      onnxruntime's basic graph optimisations (constant folding, redundant nodes), offline
o2      o1 plus onnxruntime's transformer fusions for the model type (attention, layer norm,
        GELU, embeddings: ``onnxruntime.transformers.optimizer``)
o3      o2 with onnxruntime's extended optimisations (level 2; CPU contrib ops)
int8    dynamic int8 quantisation of the weights of MatMul and Gemm, and of Gather (the
        embedding tables: without them a BERT-family int8 graph stays above 0.4x its fp32
        size, and above 0.6x for a small-vocabulary-heavy one like MiniLM), per channel; a
        tied table stored once (:mod:`hatch_onnx.int8`)
fp16    o2 converted to float16, inputs and outputs kept float32 unless ``fp16_io``
int4    weight-only 4-bit quantisation: MatMul weights as onnxruntime's MatMulNBits, embedding
        tables as GatherBlockQuantized, a tied table stored once (:mod:`hatch_onnx.int4`)
======  =====================================================================================

Each is validated on the export's validation inputs (the same seeded draw, at shapes other than
the export's) against the PyTorch or TensorFlow model, by the validator every graph goes
through (:mod:`hatch_onnx.validation`): o1-o3 at the export's ``atol``; int8 and fp16 by the
cosine similarity of each output (floors: 0.98 and 0.99 unless ``min_cosine`` says otherwise),
with the max abs diff reported beside it. int4 has a cosine floor too (0.85), which cannot tell
a correct int4 graph from one whose weights are 5% off: its weights are checked besides, against
a fake-quantised reference (:mod:`hatch_onnx.int4`, reported as ``weights``). Variants of a
graph validated by generation (:mod:`hatch_onnx.generation`) generate too: o1-o3 must give the
model's tokens, int8, fp16 and int4 report how far they agree (lossy by design, their tokens
part at the first close call). A variant that fails raises
:class:`~hatch_onnx.errors.AtolError` (values) or :class:`~hatch_onnx.errors.ShapeError`
(shapes) with the figures; one onnxruntime will not load is an :class:`~hatch_onnx.errors.ExportError`.

A variant of an export with external data (weights of 1 GiB or more) has external data too:
protobuf cannot write a graph of 2 GiB or more in one file. Its data file is named for the
variant (``model.<variant>.onnx.data``, the name the graph refers to), so that it ships beside
its graph under the same name in every layout.

Light at import: onnxruntime is imported by the functions that use it (the plan reads
:func:`settings` in the light core).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from hatch_onnx.loading import ModelLoader

VARIANTS = ("o1", "o2", "o3", "int8", "fp16", "int4")
# Default cosine floors. int4's is a sanity check of its kernels (a wrong layout or scale falls far
# below): a correct int4 graph of a tiny random fixture reaches only 0.92-0.99 on its logits (a
# tiny random decoder's weights are int4's worst case), and bench/large.py's random Qwen2.5-0.5B
# 0.890: 0.85 lets those through. What catches a weight that is off is int4.check_weights.
LOSSY = {"int8": 0.98, "fp16": 0.99, "int4": 0.85}
# How make() turns settings into bytes, in every variant's key: bumped when it writes other bytes
# for the same settings (2: external data for real sizes, tied tables stored once).
RECIPE = 2
GRAPH = "model.onnx"  # a variant's graph, as its cache entry holds it (shipped as model.<variant>.onnx)

# onnxruntime.transformers.optimizer's model types, by ours; the rest get BERT's fusions, which
# leave a graph they do not recognise as it was.
_ORT_MODEL_TYPES = {
    **dict.fromkeys(("gpt2", "gpt-neo", "codegen", "gptj", "bloom", "imagegpt"), "gpt2"),
    **dict.fromkeys(("bart", "mbart", "marian", "blenderbot", "blenderbot-small", "m2m-100", "bigbird-pegasus"), "bart"),
    **dict.fromkeys(("t5", "mt5", "longt5"), "t5"),
    **dict.fromkeys(("vit", "deit", "beit", "yolos", "data2vec-vision"), "vit"),
    **dict.fromkeys(("clip", "groupvit", "owlvit"), "clip"),
    "swin": "swin",
}


def file_name(variant: str) -> str:
    return f"model.{variant}.onnx"


def settings(variant: str, model_type: str, min_cosine: Mapping[str, float], fp16_io: bool, atol: Optional[float]) -> dict[str, Any]:
    """Everything that decides a variant's bytes and its verdict (part of its cache key)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    chosen: dict[str, Any] = {"fusions": _ORT_MODEL_TYPES.get(model_type, "bert")} if variant in ("o2", "o3", "fp16") else {}
    if variant in LOSSY:
        chosen["min_cosine"] = float(min_cosine.get(variant, LOSSY[variant]))
    else:
        chosen["atol"] = atol  # None: the architecture's own
    if variant == "fp16":
        chosen["fp16_io"] = fp16_io
    if variant == "int4":
        from hatch_onnx import int4

        chosen.update(int4.recipe())
    return chosen


def graph_bytes(graph: Path) -> int:
    """A graph's size with its external data (``<graph>.data``, as exports and variants name it)."""
    data = graph.with_name(graph.name + ".data")
    return graph.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def make(variant: str, source: Path, target: Path, settings: Mapping[str, Any]) -> None:
    """Write ``variant`` of the graph at ``source`` to ``target``; with external data when ``source`` has it.

    onnxruntime's tools name external data after the file they write: the variant is written as
    ``model.<variant>.onnx`` (its data ``model.<variant>.onnx.data``), then renamed to ``target``.
    """
    external = source.with_name(source.name + ".data").is_file()
    written = target.with_name(file_name(variant)) if external else target
    _make(variant, source, written, settings, external)
    if written != target:
        written.rename(target)


def _make(variant: str, source: Path, target: Path, settings: Mapping[str, Any], external: bool) -> None:
    if variant == "int4":
        from hatch_onnx import int4

        int4.quantize(source, target, external)  # tied tables stored once (see there)
        return
    if variant == "int8":
        from hatch_onnx import int8

        int8.quantize(source, target, external)  # tied tables stored once (see there)
        return
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    if variant == "o1":
        model = optimizer.optimize_model(str(source), opt_level=1, only_onnxruntime=True)
    else:
        fusions = settings["fusions"]
        model = optimizer.optimize_model(str(source), model_type=fusions, num_heads=0, hidden_size=0,
                                         opt_level=2 if variant == "o3" else 1, optimization_options=FusionOptions(fusions))
        if variant == "fp16":
            model.convert_float_to_float16(keep_io_types=not settings["fp16_io"])
    from hatch_onnx.graph_passes import tie_transposed_copies

    tie_transposed_copies(model.model.graph)  # tied embeddings stay stored once (see there)
    model.save_model_to_file(str(target), use_external_data_format=external, all_tensors_to_one_file=True)


def make_and_validate(request: Mapping[str, Any], load: "ModelLoader", release: Callable[[], Any] = lambda: None) -> dict[str, Any]:
    """The worker's side of a variant job: make it from ``request["source"]``, validate, report.

    The reference is the float32 model on the export's validation draw; the comparison is the
    one every graph gets (:func:`hatch_onnx.validation.validate_graph`), at the variant's
    :class:`~hatch_onnx.validation.Tolerance`. As for an export, everything needed of the model
    is computed first; a model large enough for external data is then let go of (``release``:
    the loader's) before onnxruntime opens a graph, and loaded again for generation's one pass
    once the graph has decoded and its session is closed (:class:`hatch_onnx.loading.Held`).
    """
    from hatch_onnx import generation, genai_builder
    from hatch_onnx.config import needs_external_data
    from hatch_onnx.errors import ExportError
    from hatch_onnx.loading import Held
    from hatch_onnx.frameworks import backend_of
    from hatch_onnx.models import support_for
    from hatch_onnx.validation import Tolerance, open_session, reference_outputs, validate_graph, validation_inputs

    timings: dict[str, float] = {}
    variant, chosen = request["variant"], request["settings"]
    target = Path(request["output"]) / GRAPH
    t0 = time.perf_counter()
    model, _ = load(request["feature"], request["model"], request["framework"], None, "float32")  # variants start from float32
    # a variant of onnxruntime-genai's graph keeps its interface
    config = genai_builder.onnx_config_for(support_for(model.config.model_type), request["feature"], request.get("exporter"), model.config)
    inputs, reference = reference_outputs(model, config, validation_inputs(config))  # the export's validation draw
    timings["load"] = time.perf_counter() - t0
    large = needs_external_data(backend_of(model).weight_bytes(model))
    held = Held(model, reload=lambda: load(request["feature"], request["model"], request["framework"], None, "float32")[0])
    del model  # held's is the one reference
    if large:
        held.release(release)

    t0 = time.perf_counter()
    try:
        make(variant, Path(request["source"]), target, chosen)
    except Exception as exc:  # onnxruntime's tools raise many types
        raise ExportError(f"variant {variant}: onnxruntime could not make it: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    timings["make"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if "min_cosine" in chosen:
        tolerance = Tolerance(min_cosine=chosen["min_cosine"])
    else:
        tolerance = Tolerance(atol=chosen.get("atol") if chosen.get("atol") is not None else config.atol_for_validation)
    session = open_session(target, f"variant {variant} graph")  # one session for both checks
    validation = validate_graph(target, config, inputs, reference, tolerance, label=f"variant {variant}", session=session)
    timings["validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = generation.decode(session, config) if generation.applies(config) else None
    del session  # before the model is loaded again, and int4's check opens two graphs of its own
    if decoded is not None:
        # Lossless variants (o1-o3) must generate what the model does, as the export; lossy ones
        # (int8, fp16, int4) legitimately part from it at the first close call, so their generation is
        # reported (how many steps agree) and their verdict stays the cosine floor's.
        validation["generation"] = generation.verdict(decoded, generation.model_steps(held.again(), config, decoded), config, tolerance,
                                                      label=f"variant {variant}", enforce=variant not in LOSSY)
        if large:
            held.release(release)
        timings["generate"] = time.perf_counter() - t0
    if variant == "int4":  # the cosine floor cannot see a weight 5% off: the weights against int4's own numerics
        from hatch_onnx import int4

        t0 = time.perf_counter()
        validation["weights"] = int4.check_weights(Path(request["source"]), target, config, inputs, label=f"variant {variant}")
        timings["validate"] += time.perf_counter() - t0
    return {
        "variant": variant,
        "settings": dict(chosen),
        "size": graph_bytes(target),
        "source_size": graph_bytes(Path(request["source"])),
        "validation": validation,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
