"""params -> jobs: each model resolved once, every feature checked, one frozen value per (model, feature).

A :class:`Job` holds all that determines its export; it makes its cache key's inputs and the
request a worker runs (:meth:`Job.request`, the fields of :class:`hatch_onnx.exporting.ExportRequest`).
Resolving a model reads its ``config.json`` and looks for its weights once, whatever the number
of features; every error names the params.yaml key at fault.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from hatch_onnx.errors import BadInputError, ParamsError
from hatch_onnx.frameworks.exporters import exporter_name
from hatch_onnx.layouts import DEFAULT_LAYOUTS, as_layouts
from hatch_onnx.toolchain import Versions, job_versions

if TYPE_CHECKING:  # pragma: no cover
    from hatch_onnx.params import ParamsSource
    from hatch_onnx.schema import ModelParams


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    feature: str
    checkpoint: Path
    model_type: str
    framework: str
    opset: int
    atol: Optional[float]
    exporter: str
    allow_new_head: bool
    variants: tuple[str, ...] = ()  # o1, o2, o3, int8, fp16, int4: each its own cache entry
    min_cosine: tuple[tuple[str, float], ...] = ()  # (variant, floor) for the lossy variants
    fp16_io: bool = False
    dtype: str = "float32"  # the precision the model is loaded, exported and validated in
    # Where its files go when materialised (hatch_onnx.layouts): never part of the cache key.
    layouts: tuple[str, ...] = DEFAULT_LAYOUTS

    @property
    def label(self) -> str:
        return f"{self.name}:{self.feature}"

    def key_inputs(self, checkpoint_fingerprint: str, versions: Versions) -> dict:
        """Everything that determines the exported bytes and the validation verdict."""
        from hatch_onnx import generation, graph_sets
        from hatch_onnx.config import OnnxConfig
        from hatch_onnx.validation import VALIDATION_BATCH_DELTA, VALIDATION_PAST_DELTA, VALIDATION_SEQUENCE_DELTA

        return {
            "checkpoint": checkpoint_fingerprint,
            "model_type": self.model_type,
            "feature": self.feature,
            "framework": self.framework,
            "opset": self.opset,
            "dtype": self.dtype,
            "exporter": {"name": exporter_name(self.framework, self.exporter), "allow_new_head": self.allow_new_head},
            "validation": {
                "atol": self.atol,
                "seed": OnnxConfig.DUMMY_SEED,
                "deltas": [VALIDATION_BATCH_DELTA, VALIDATION_SEQUENCE_DELTA, VALIDATION_PAST_DELTA],
                # only where it runs: the keys of every other job stay as they were
                **({"generation": generation.SETTINGS} if generation.applies_to_feature(self.feature) else {}),
            },
            # an encoder-decoder's graph set beside model.onnx (hatch_onnx.graph_sets), where one is made
            **({"graph_set": {"version": graph_sets.VERSION, "generation": generation.SETTINGS}}
               if graph_sets.applies(self.model_type, self.feature, self.framework) else {}),
            "versions": job_versions(versions, self.framework, self.exporter),
        }

    def variant_settings(self, variant: str) -> dict[str, Any]:
        """What decides a variant's bytes and verdict, beyond its source export."""
        from hatch_onnx.variants import settings

        return settings(variant, self.model_type, dict(self.min_cosine), self.fp16_io, self.atol)

    def variant_inputs(self, variant: str, export_key: str, versions: Versions) -> dict:
        """A variant's key inputs: its source export's key, its settings, the onnxruntime that makes it."""
        from hatch_onnx.variants import RECIPE

        return {
            "source": export_key,
            "variant": variant,
            "recipe": RECIPE,
            "settings": self.variant_settings(variant),
            "versions": {name: versions.get(name) for name in ("hatch-onnx", "onnxruntime", "onnx")},
        }

    def request(self) -> dict[str, Any]:
        """What a worker runs: the keyword arguments of ``ExportRequest`` (plain JSON data)."""
        return {
            "model": str(self.checkpoint), "feature": self.feature, "framework": self.framework, "opset": self.opset,
            "atol": self.atol, "exporter": self.exporter, "allow_new_head": self.allow_new_head, "dtype": self.dtype,
        }

    @property
    def head(self) -> str:
        """The task whose model class the job loads: jobs with the same head share one loaded model."""
        from hatch_onnx.models import feature_to_task

        return feature_to_task(self.feature)


def resolve_plan(source: "ParamsSource", only: Optional[Iterable[str]] = None) -> list[Job]:
    """The jobs of params.yaml (or of the models in ``only``), validated once per file content."""
    selected = sorted(only or [])
    memo = _Memo(source, selected)
    jobs = memo.load()
    if jobs is None:
        jobs = _resolve(source, selected)
        memo.save(jobs)
    return jobs


def _resolve(source: "ParamsSource", selected: list[str]) -> list[Job]:
    from hatch_onnx import fused, genai_builder  # light: config.json readers

    params = source.params
    models = params.onnx.models
    for name in selected:
        if name not in models:
            raise ParamsError(f"--only {name}: no such model in {source.file} (models: {', '.join(models)})", key=f"onnx.models.{name}")
    jobs = []
    for name, model in models.items():
        if selected and name not in selected:
            continue
        checkpoint, support, framework = _resolve_model(source, name, model)
        minimum = support.onnx_config.DEFAULT_ONNX_OPSET
        wanted = model.opset if model.opset is not None else params.onnx.opset
        dtype = model.dtype or params.onnx.dtype
        layouts = as_layouts(model.layout if model.layout is not None else params.onnx.layout)
        variants = tuple(dict.fromkeys(model.variants if model.variants is not None else params.onnx.variants))
        if dtype != "float32":
            key = f"onnx.models.{name}.dtype" if model.dtype else "onnx.dtype"
            if framework != "pt":
                raise ParamsError(f"{source.file}: {key}: {dtype} exports PyTorch checkpoints only; {name} is TensorFlow", key=key)
            if variants:  # they are made from, and measured against, float32 graphs
                raise ParamsError(f"{source.file}: {key}: variants ({', '.join(variants)}) are made from float32 exports, "
                                  f"not {dtype}: use the fp16 variant, or drop the variants", key=key)
        for index, feature in enumerate(model.features):
            key = f"onnx.models.{name}.features[{index}]"
            try:
                support.check(feature, framework, where=str(checkpoint))
            except BadInputError as exc:
                raise ParamsError(f"{source.file}: {key}: {exc}", key=key) from None
            # None: fused where it writes the model (hatch_onnx.fused.writes). params' opset is a default, not a
            # demand (an architecture's minimum wins when higher): fused's opset 23 wins over it too.
            exporter = model.exporter if model.exporter is not None else exporter_name(
                framework, None, fused.writes(checkpoint, support.model_type, feature, framework, dtype, None))
            if wanted is not None:
                opset_key = f"onnx.models.{name}.opset" if model.opset is not None else "onnx.opset"
                try:
                    support.opset(max(wanted, minimum), exporter_name(framework, exporter))
                except BadInputError as exc:
                    raise ParamsError(f"{source.file}: {opset_key}: {exc}", key=opset_key) from None
            if model.exporter in ("genai", "fused"):  # what the builders make (genai's line is the worker's to check)
                try:
                    if model.exporter == "genai":
                        genai_builder.check(checkpoint, support.model_type, feature, framework, dtype, None, check_installed=False)
                    else:
                        fused.check(checkpoint, support.model_type, feature, framework, dtype)
                except BadInputError as exc:
                    exporter_key = f"onnx.models.{name}.exporter"
                    raise ParamsError(f"{source.file}: {exporter_key}: {exc}", key=exporter_key) from None
            jobs.append(Job(
                name=name, feature=feature, checkpoint=checkpoint, model_type=support.model_type, framework=framework,
                # a default, not a demand: the architecture's minimum wins when higher
                opset=max(wanted or minimum, minimum),
                atol=model.atol if model.atol is not None else params.onnx.atol,
                exporter=exporter, allow_new_head=model.allow_new_head,
                variants=variants,
                min_cosine=tuple(sorted({**params.onnx.min_cosine, **(model.min_cosine or {})}.items())),
                fp16_io=model.fp16_io, dtype=dtype, layouts=layouts,
            ))
    return jobs


def _resolve_model(source: "ParamsSource", name: str, model: "ModelParams"):
    """(checkpoint, registry entry, framework) of one model; errors name its key."""
    from hatch_onnx.models import support_for
    from hatch_onnx.checkpoints import determine_framework, read_model_type

    prefix = f"onnx.models.{name}"
    checkpoint = source.checkpoint(model)
    try:
        support = support_for(read_model_type(checkpoint), where=str(checkpoint))
    except BadInputError as exc:  # the folder, its config.json or its model type
        raise ParamsError(f"{source.file}: {prefix}.checkpoint: {exc}", key=f"{prefix}.checkpoint") from None
    try:
        framework = determine_framework(str(checkpoint), None if model.framework == "auto" else model.framework)
    except BadInputError as exc:  # asked for weights the checkpoint does not have
        raise ParamsError(f"{source.file}: {prefix}.framework: {exc}", key=f"{prefix}.framework") from None
    return checkpoint, support, framework


class _Memo:
    """The validated plan, memoised per params content and selection.

    Validating params.yaml (pydantic, the registry, each checkpoint's config.json) costs more
    than everything else a fully cached build does. A plan is a pure function of the params
    bytes, the selection and what resolving read from disk, so it is stored under the cache's
    state folder, keyed by the first two and guarded by the stats of the third, as DVC's state
    does. A read-only cache only loses the memo.
    """

    def __init__(self, source: "ParamsSource", selected: list[str]) -> None:
        import xxhash

        from hatch_onnx.__about__ import __version__

        selection = json.dumps([str(source.file), selected, __version__]).encode()
        self.path = source.cache_root / "state" / "plans" / f"{xxhash.xxh3_128_hexdigest(source.raw + selection)}.json"

    def load(self) -> Optional[list[Job]]:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            jobs = [Job(**{**job, "checkpoint": Path(job["checkpoint"]), "variants": tuple(job["variants"]),
                           "min_cosine": tuple(map(tuple, job["min_cosine"])), "layouts": tuple(job["layouts"])})
                    for job in saved["jobs"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return jobs if saved["watched"] == _watched(job.checkpoint for job in jobs) else None

    def save(self, jobs: list[Job]) -> None:
        from hatch_onnx.atomic import write_json

        record = {
            "jobs": [{**dataclasses.asdict(job), "checkpoint": str(job.checkpoint)} for job in jobs],
            "watched": _watched(job.checkpoint for job in jobs),
        }
        try:
            write_json(self.path, record)
        except OSError:  # a read-only cache still builds, only slower
            pass


def _watched(checkpoints: Iterable[Path]) -> Mapping[str, Any]:
    """What resolving read: config.json stats and which weights exist."""
    from hatch_onnx.weights import PT_WEIGHTS, TF_WEIGHTS

    watched: dict[str, Any] = {}
    for checkpoint in sorted(set(checkpoints)):
        config = checkpoint / "config.json"
        try:
            st = config.stat()
            watched[str(config)] = [st.st_size, st.st_mtime_ns]
        except OSError:
            watched[str(config)] = None
        watched[str(checkpoint)] = [name for name in PT_WEIGHTS + TF_WEIGHTS if (checkpoint / name).exists()]
    return watched
