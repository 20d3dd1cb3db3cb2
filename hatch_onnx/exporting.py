"""One checkpoint, one feature: load, export, validate, and only then put ``model.onnx`` in place.

This is what ``hatch-onnx export`` and the build's worker run, in four steps:

1. :func:`check_request`: every input that can be checked cheaply (folder, config.json, model
   type, feature, opset, atol, dtype, OUTPUT), before any ML framework is imported;
2. :func:`_load`: the model, its ONNX config, the preprocessor, and the refusal of a head the
   checkpoint has no weights for;
3. :func:`_export_and_validate`: the framework's back-end writes the graph into a staging
   folder beside OUTPUT, :mod:`hatch_onnx.validation` checks it there (and a causal LM with past
   also decodes 16 tokens, each checked against the model: :mod:`hatch_onnx.generation`), and
   only a graph that passed is moved into place (its weights first). A large model is held
   once: a fused graph's session reads its tensors in place; any other large model is freed
   while onnxruntime holds the graph and loaded again for generation's one pass (:class:`Loaded`);
4. the report.

A graph that failed validation is never left where a user would find it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from hatch_onnx.atomic import staging_folder, write_json
from hatch_onnx.checkpoints import determine_framework, read_model_type
from hatch_onnx.errors import BadInputError, MissingHeadWeightsError
from hatch_onnx.frameworks.exporters import exporter_name
from hatch_onnx.frameworks.env import isolate
from hatch_onnx import fused, genai_builder
from hatch_onnx.layouts import as_layouts
from hatch_onnx.loading import DTYPES, Held, ModelLoader, load_model, load_preprocessor
from hatch_onnx.models import ModelSupport, support_for
from hatch_onnx.toolchain import transformers_major

__all__ = ["DTYPES", "ExportRequest", "ModelLoader", "check_request", "export_checkpoint"]


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    model: Path
    feature: str = "default"
    framework: Optional[str] = None
    opset: Optional[int] = None
    atol: Optional[float] = None
    exporter: Optional[str] = None  # None: fused where it writes the model, else torchscript (exporter_name)
    preprocessor: str = "auto"
    allow_new_head: bool = False
    cache_dir: Optional[str] = None
    # float16: the model is loaded in float16 and the graph exported and validated in it (PyTorch)
    dtype: str = "float32"
    # None: the graph alone (what a cache entry holds). Layouts (hatch_onnx.layouts): a complete
    # model folder, the graph placed for each, with the checkpoint's config and preprocessor
    # files and, for decoders onnxruntime-genai runs, genai_config.json.
    layouts: Optional[tuple[str, ...]] = None


@dataclasses.dataclass(frozen=True)
class CheckedRequest:
    """What :func:`check_request` settled before any model loads."""

    request: ExportRequest
    model_dir: Path
    support: ModelSupport
    framework: str
    exporter: str  # the one the framework uses (tf2onnx for TensorFlow)
    opset: int


def check_request(request: ExportRequest, output: Path) -> CheckedRequest:
    """Refuse bad input (exit 2) before anything heavy is imported; what the export will use."""
    model_dir = Path(request.model)
    support = support_for(read_model_type(model_dir), where=str(model_dir))
    framework = determine_framework(str(model_dir), request.framework)
    support.check(request.feature, framework, where=str(model_dir), transformers_major=transformers_major() or 5)
    exporter = exporter_name(framework, request.exporter, request.exporter is None and fused.writes(
        model_dir, support.model_type, request.feature, framework, request.dtype, request.opset))
    if genai_builder.applies(exporter):  # onnxruntime-genai's builder: what it makes, on the line it runs on
        genai_builder.check(model_dir, support.model_type, request.feature, framework, request.dtype, transformers_major())
    if fused.applies(exporter):
        fused.check(model_dir, support.model_type, request.feature, framework, request.dtype)
    opset = support.opset(request.opset, exporter)
    _check_output(Path(output))
    if request.atol is not None and not 0 < request.atol < float("inf"):  # NaN fails both
        raise BadInputError(f"atol {request.atol}: must be a positive finite number")
    if request.dtype not in DTYPES:
        raise BadInputError(f"dtype {request.dtype}: choose {' or '.join(DTYPES)}")
    if request.dtype != "float32" and framework != "pt":
        raise BadInputError(f"{model_dir}: dtype {request.dtype} exports PyTorch checkpoints only")
    if request.layouts is not None:
        try:
            as_layouts(request.layouts)
        except ValueError as exc:
            raise BadInputError(f"--layout: {exc}") from None
    return CheckedRequest(request, model_dir, support, framework, exporter, opset)


def _check_output(output: Path) -> None:
    """OUTPUT is a folder (or a ``.onnx`` path); anything else is refused before any model loads."""
    folder = output.parent if output.suffix == ".onnx" else output
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise BadInputError(f"{output}: {path} is a file, not a folder to write model.onnx into")
            break
    if output.suffix == ".onnx" and output.is_dir():
        raise BadInputError(f"{output}: a folder, not a .onnx file")


def export_checkpoint(request: ExportRequest, output: Path, report_path: Optional[Path] = None, log: Callable[[str], Any] = print,
                      load: ModelLoader = load_model, release: Callable[[], Any] = lambda: None) -> dict[str, Any]:
    """Export and validate; returns the report. ``output`` is a folder (or a ``.onnx`` path).

    ``load`` loads the model; a worker passes one that keeps the last model loaded, so that the
    features of one checkpoint that share a head class share one load, and ``release``, which
    makes it let go of that model: a large one is freed before validation (:class:`Loaded`).
    """
    started = time.perf_counter()
    checked = check_request(request, Path(output))
    isolate(checked.framework)
    t0 = time.perf_counter()
    loaded = _load(checked, load, log)
    timings = {"load": time.perf_counter() - t0}
    onnx_config, overrides, new_head = loaded.onnx_config, loaded.overrides, loaded.new_head
    atol = request.atol if request.atol is not None else onnx_config.atol_for_validation
    if request.dtype == "float16" and request.atol is None:
        from hatch_onnx.validation import FP16_ATOL

        atol = max(atol, FP16_ATOL)
    target = output if output.suffix == ".onnx" else output / "model.onnx"
    files, validation, graph_opset = _export_and_validate(checked, loaded, atol, target, timings, release)
    timings["total"] = time.perf_counter() - started
    report = {
        "model": str(checked.model_dir),
        "model_type": checked.support.model_type,
        "feature": request.feature,
        "framework": checked.framework,
        "exporter": checked.exporter,
        # the builders write their own opset (hatch_onnx.genai_builder, hatch_onnx.fused): the report says the graph's
        "opset": graph_opset,
        "dtype": request.dtype,
        "atol": atol,
        "files": files,
        "new_head_weights": new_head,
        # model config values the export set (use_cache; a pad token the checkpoint lacked)
        "config_overrides": overrides,
        "validation": validation,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    if report_path is not None:
        write_json(report_path, report)
    return report


def _builds_own_graph(exporter: str) -> bool:
    """Whether the exporter writes the graph itself, at its own opset, rather than torch.onnx tracing it at the job's."""
    return genai_builder.applies(exporter) or fused.applies(exporter)


@dataclasses.dataclass
class Loaded(Held):
    """A loaded model and what goes with it; the one reference to the model an export holds (:class:`Held`)."""

    onnx_config: Any = None
    overrides: dict = dataclasses.field(default_factory=dict)
    preprocessor: Any = None
    new_head: list[str] = dataclasses.field(default_factory=list)


def _load(checked: CheckedRequest, load: ModelLoader, log: Callable[[str], Any]) -> Loaded:
    """The model, its ONNX config, the config values the export sets, preprocessor, new head weights."""
    request = checked.request
    model, missing = load(request.feature, str(checked.model_dir), checked.framework, request.cache_dir, request.dtype)
    onnx_config = genai_builder.onnx_config_for(checked.support, request.feature, checked.exporter, model.config)
    overrides = dict(onnx_config.values_override or {})  # before anything sets them on the model
    preprocessor = load_preprocessor(request.preprocessor, checked.model_dir)
    new_head = _new_head_weights(model, onnx_config, missing, checked.framework)
    if new_head:
        message = (
            f"{checked.model_dir}: the checkpoint has no weights for {len(new_head)} tensor(s) the {request.feature!r} graph uses "
            f"({', '.join(new_head[:6])}{', ...' if len(new_head) > 6 else ''}): they would be random"
        )
        if not request.allow_new_head:
            raise MissingHeadWeightsError(message + "; pass --allow-new-head to export a new head anyway", new_head)
        log(f"WARNING: {message}; exporting a randomly initialised head (--allow-new-head)")
    if overrides.get("pad_token_id", 0) < 0:
        log(f"note: {checked.model_dir} has no pad_token_id nor eos_token_id: {request.feature!r} scores every row's last token")
    elif "pad_token_id" in overrides:
        log(f"note: {checked.model_dir} has no pad_token_id: {request.feature!r} uses the eos token ({overrides['pad_token_id']}) as padding")
    return Loaded(model=model, reload=lambda: load(request.feature, str(checked.model_dir), checked.framework, request.cache_dir, request.dtype)[0],
                  onnx_config=onnx_config, overrides=overrides, preprocessor=preprocessor, new_head=new_head)


def _export_and_validate(checked: CheckedRequest, loaded: Loaded, atol: float, target: Path, timings: dict[str, float],
                         release: Callable[[], Any]) -> tuple[list[str], dict[str, Any], int]:
    """Export into a staging folder beside ``target``, validate there, then move the files into place;
    the files, the validation's figures and the graph's opset.

    The one-step check's reference outputs are computed first. onnxruntime then opens the graph:
    a fused graph's session reads the model's own tensors in place (:class:`hatch_onnx.fused.Built`),
    so model and graph share one copy of the weights; any other large model is released
    (:class:`Held`) before the session, which holds its own, and loaded again, once the graph has
    decoded and its session is closed, for generation's one pass (:mod:`hatch_onnx.generation`).
    """
    from hatch_onnx import generation, graph_sets
    from hatch_onnx.config import needs_external_data
    from hatch_onnx.frameworks import backend
    from hatch_onnx.validation import Tolerance, open_session, reference_outputs, validate_graph, validation_inputs

    exporter, onnx_config = backend(checked.framework), loaded.onnx_config
    # onnxruntime-genai's builder loads the checkpoint itself, in its own process, after our model is done with
    genai = genai_builder.applies(checked.exporter)
    in_place: Mapping[str, Any] = {}  # weights a session reads from the model rather than from the graph's data file
    with staging_folder(target.parent, ".hatch-onnx-staging-") as staging:
        staged = staging / target.name
        if fused.applies(checked.exporter):
            t0 = time.perf_counter()
            built = fused.build(loaded.model, onnx_config, staged, external=needs_external_data(exporter.weight_bytes(loaded.model)))
            onnx_outputs, in_place = built.outputs, built.weights
            timings["export"] = time.perf_counter() - t0
        elif not genai:
            t0 = time.perf_counter()
            _, onnx_outputs = exporter.export(loaded.preprocessor, loaded.model, onnx_config, checked.opset, staged, exporter=checked.exporter)
            timings["export"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        inputs, reference = reference_outputs(loaded.model, onnx_config, validation_inputs(onnx_config))
        timings["validate"] = time.perf_counter() - t0
        validation: dict[str, Any] = {}
        if graph_sets.applies(checked.support.model_type, checked.request.feature, checked.framework) and target.name == "model.onnx":
            # The one-step graph is the legacy interface; generation needs the set beside it.
            t0 = time.perf_counter()
            graph_sets.export_set(loaded.model, onnx_config, checked.opset, staging)
            timings["export_set"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            validation["graph_set"] = graph_sets.validate_set(staging, loaded.model, onnx_config, atol, timings)
            validation["generation"] = validation["graph_set"].pop("generation")
            timings["validate_set"] = time.perf_counter() - t0 - timings["generate"]
        if needs_external_data(exporter.weight_bytes(loaded.model)) and not in_place:
            loaded.release(release)  # from here on onnxruntime (or the builder) holds the weights
        if genai:
            t0 = time.perf_counter()
            _, onnx_outputs = genai_builder.build(checked.model_dir, staged, checked.request.dtype)
            timings["export"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # one session for both checks: opening one costs seconds at real sizes (unless it reads the weights in place)
        session = open_session(staged, weights=in_place)
        validation = {**validate_graph(staged, onnx_config, inputs, reference, Tolerance(atol=atol), named_outputs=onnx_outputs,
                                       session=session), **validation}
        timings["validate"] += time.perf_counter() - t0
        decoded = None
        if generation.applies(onnx_config):  # the graph decodes first; the model checks every step after, in one pass
            t0 = time.perf_counter()
            decoded = generation.decode(session, onnx_config)
            timings["generate"] = time.perf_counter() - t0
        del session
        if decoded is not None:
            t0 = time.perf_counter()
            expected = generation.model_steps(loaded.again(), onnx_config, decoded)
            validation["generation"] = generation.verdict(decoded, expected, onnx_config, Tolerance(atol=atol))
            timings["generate"] += time.perf_counter() - t0
        # the builders write their own opset: the graph says which (read here: a layout may not leave it at target)
        graph_opset = genai_builder.graph_opset(staged) if _builds_own_graph(checked.exporter) else checked.opset
        if checked.request.layouts is not None and target.name == "model.onnx":
            _complete_folder(staging, checked, validation)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        # Graphs last, their data before them: a graph never appears without its weights or its folder's files.
        for name in sorted(files, key=lambda n: (n.endswith(".onnx"), n)):
            (target.parent / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).replace(target.parent / name)
    return files, validation, graph_opset


def _complete_folder(staging: Path, checked: CheckedRequest, validation: dict[str, Any]) -> None:
    """Make the staged graph a model folder: placed for each layout, with the checkpoint's side files and genai config."""
    import shutil

    from hatch_onnx.checkpoints import side_files
    from hatch_onnx.genai import genai_config_text
    from hatch_onnx.layouts import GENAI_CONFIG_FILE, graph_path, placed, primary

    layouts = as_layouts(checked.request.layouts)
    builder_genai = staging / GENAI_CONFIG_FILE  # onnxruntime-genai's builder wrote the graph and this config
    builder_config = builder_genai.read_text(encoding="utf-8") if builder_genai.is_file() else None
    if builder_config is not None:
        builder_genai.unlink()
    graph_files = sorted(p.name for p in staging.iterdir())
    for layout in layouts:
        for name in graph_files:
            destination = staging / placed(layout, name)
            if destination != staging / name:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(staging / name, destination)
    if "optimum" not in layouts:
        for name in graph_files:
            (staging / name).unlink()
    for side in side_files(checked.model_dir):
        shutil.copyfile(side, staging / side.name)
    if builder_config is not None:
        genai = genai_builder.placed_config_text(builder_config, graph_path(primary(layouts)))
    else:
        genai = genai_config_text(checked.model_dir, checked.support.model_type, checked.request.feature, validation["graph"],
                                  graph_path(primary(layouts)))
    if genai is not None:
        (staging / GENAI_CONFIG_FILE).write_text(genai, encoding="utf-8")


def _new_head_weights(model: Any, onnx_config: Any, missing: list[str], framework: str) -> list[str]:
    if not missing:
        return []
    from hatch_onnx.frameworks import backend

    inputs = onnx_config.generate_dummy_inputs(None)  # numpy: each back-end makes its own tensors
    return backend(framework).weights_reaching_outputs(model, onnx_config, inputs, missing)
