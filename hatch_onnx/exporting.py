"""One checkpoint, one feature: load, export, validate, and only then put ``model.onnx`` in place.

This is what ``hatch-onnx export`` and the build's worker run. It checks every input that can
be checked cheaply (folder, config.json, model type, feature, opset) before importing any ML
framework, and it never leaves a graph that failed validation where a user would find it.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from hatch_onnx.errors import MissingHeadWeightsError
from hatch_onnx.models import support_for
from hatch_onnx.onnx.features import FeaturesManager, isolate_framework, read_model_type

# (feature, checkpoint, framework, cache_dir, dtype) -> (model, names of weights the checkpoint lacked)
ModelLoader = Callable[[str, str, str, Optional[str], str], tuple[Any, list[str]]]
DTYPES = ("float32", "float16")


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    model: Path
    feature: str = "default"
    framework: Optional[str] = None
    opset: Optional[int] = None
    atol: Optional[float] = None
    exporter: str = "torchscript"
    preprocessor: str = "auto"
    allow_new_head: bool = False
    cache_dir: Optional[str] = None
    # float16: the model is loaded in float16 and the graph exported and validated in it (PyTorch)
    dtype: str = "float32"


def _check_output(output: Path) -> None:
    """OUTPUT is a folder (or a ``.onnx`` path); anything else is refused before any model loads."""
    from hatch_onnx.errors import BadInputError

    folder = output.parent if output.suffix == ".onnx" else output
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise BadInputError(f"{output}: {path} is a file, not a folder to write model.onnx into")
            break
    if output.suffix == ".onnx" and output.is_dir():
        raise BadInputError(f"{output}: a folder, not a .onnx file")


def _transformers_major() -> int:
    from importlib.metadata import version

    return int(version("transformers").split(".")[0])


def _load_preprocessor(kind: str, model_dir: Path) -> Any:
    """The named preprocessor; ``auto`` loads none (dummy inputs come from the model config)."""
    if kind == "auto":
        return None
    import transformers

    loader = {
        "tokenizer": transformers.AutoTokenizer,
        "feature_extractor": transformers.AutoFeatureExtractor,
        "processor": transformers.AutoProcessor,
    }[kind]
    return loader.from_pretrained(model_dir, local_files_only=True)


def export_checkpoint(request: ExportRequest, output: Path, report_path: Optional[Path] = None, log=print,
                      load: ModelLoader = FeaturesManager.load_model) -> dict[str, Any]:
    """Export and validate; returns the report. ``output`` is a folder (or a ``.onnx`` path).

    ``load`` loads the model; a worker passes one that keeps the last model loaded, so that the
    features of one checkpoint that share a head class share one load.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model_dir = Path(request.model)
    support = support_for(read_model_type(model_dir), where=str(model_dir))
    framework = FeaturesManager.determine_framework(str(model_dir), request.framework)
    support.check(request.feature, framework, where=str(model_dir), transformers_major=_transformers_major())
    model_type, opset = support.model_type, support.opset(request.opset, request.exporter if framework == "pt" else "tf2onnx")
    _check_output(Path(output))
    if request.atol is not None and not 0 < request.atol < float("inf"):  # NaN fails both
        from hatch_onnx.errors import BadInputError

        raise BadInputError(f"atol {request.atol}: must be a positive finite number")
    if request.dtype not in DTYPES or (request.dtype != "float32" and framework != "pt"):
        from hatch_onnx.errors import BadInputError

        raise BadInputError(f"dtype {request.dtype}: choose {' or '.join(DTYPES)}" if request.dtype not in DTYPES
                            else f"{model_dir}: dtype {request.dtype} exports PyTorch checkpoints only")
    isolate_framework(framework)

    t0 = time.perf_counter()
    model, missing = load(request.feature, str(model_dir), framework, request.cache_dir, request.dtype)
    _, constructor = FeaturesManager.check_supported_model_or_raise(model, request.feature)
    onnx_config = constructor(model.config)
    overrides = dict(onnx_config.values_override or {})  # before anything sets them on the model
    preprocessor = _load_preprocessor(request.preprocessor, model_dir)
    timings["load"] = time.perf_counter() - t0

    new_head = _new_head_weights(model, onnx_config, missing, framework)
    if new_head:
        message = (
            f"{model_dir}: the checkpoint has no weights for {len(new_head)} tensor(s) the {request.feature!r} graph uses "
            f"({', '.join(new_head[:6])}{', ...' if len(new_head) > 6 else ''}): they would be random"
        )
        if not request.allow_new_head:
            raise MissingHeadWeightsError(message + "; pass --allow-new-head to export a new head anyway", new_head)
        log(f"WARNING: {message}; exporting a randomly initialised head (--allow-new-head)")

    if overrides.get("pad_token_id", 0) < 0:
        log(f"note: {model_dir} has no pad_token_id nor eos_token_id: {request.feature!r} scores every row's last token")
    elif "pad_token_id" in overrides:
        log(f"note: {model_dir} has no pad_token_id: {request.feature!r} uses the eos token ({overrides['pad_token_id']}) as padding")
    atol = request.atol if request.atol is not None else onnx_config.atol_for_validation
    if request.dtype == "float16" and request.atol is None:
        from hatch_onnx.onnx.convert import FP16_ATOL

        atol = max(atol, FP16_ATOL)
    target = output if output.suffix == ".onnx" else output / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".hatch-onnx-staging-", dir=target.parent))
    try:
        from hatch_onnx.onnx.convert import export, validate_model_outputs

        staged = staging / target.name
        t0 = time.perf_counter()
        _, onnx_outputs = export(preprocessor, model, onnx_config, opset, staged, exporter=request.exporter)
        timings["export"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        validation = validate_model_outputs(onnx_config, preprocessor, model, staged, onnx_outputs, atol)
        timings["validate"] = time.perf_counter() - t0
        files = sorted(p.name for p in staging.iterdir())
        # The data file first: the graph never appears without its weights.
        for name in sorted(files, key=lambda n: n == target.name):
            (staging / name).replace(target.parent / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    timings["total"] = time.perf_counter() - started
    report = {
        "model": str(model_dir),
        "model_type": model_type,
        "feature": request.feature,
        "framework": framework,
        "exporter": request.exporter if framework == "pt" else "tf2onnx",
        "opset": opset,
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
        from hatch_onnx.atomic import write_json

        write_json(report_path, report)
    return report


def _new_head_weights(model: Any, onnx_config: Any, missing: list[str], framework: str) -> list[str]:
    if not missing:
        return []
    if framework == "tf":
        from hatch_onnx.frameworks.tensorflow import weights_reaching_outputs
    else:
        from hatch_onnx.frameworks.pytorch import weights_reaching_outputs

    inputs = onnx_config.generate_dummy_inputs(None, framework=None if framework == "tf" else "pt")
    return weights_reaching_outputs(model, onnx_config, inputs, missing)
