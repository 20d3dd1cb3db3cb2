"""params -> jobs: one frozen value per (model, feature) holding all that determines its export."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from hatch_onnx.errors import ParamsError

if TYPE_CHECKING:  # pragma: no cover
    from hatch_onnx.params import ParamsFile

# Distributions whose versions enter a job's cache key, by framework: only those the job uses.
TOOLCHAIN = {
    "pt": ("torch", "transformers", "onnx", "onnxruntime"),
    "tf": ("tensorflow", "tf-keras", "tf2onnx", "transformers", "onnx", "onnxruntime"),
}


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

    @property
    def label(self) -> str:
        return f"{self.name}:{self.feature}"

    def key_inputs(self, checkpoint_fingerprint: str, versions: Mapping[str, str]) -> dict:
        """Everything that determines the exported bytes and the validation verdict."""
        from hatch_onnx.onnx.config import OnnxConfig
        from hatch_onnx.onnx.convert import VALIDATION_BATCH_DELTA, VALIDATION_PAST_DELTA, VALIDATION_SEQUENCE_DELTA

        wanted = TOOLCHAIN[self.framework] + (("onnxscript",) if self.exporter == "dynamo" else ())
        return {
            "checkpoint": checkpoint_fingerprint,
            "model_type": self.model_type,
            "feature": self.feature,
            "framework": self.framework,
            "opset": self.opset,
            "exporter": {"name": self.exporter if self.framework == "pt" else "tf2onnx", "allow_new_head": self.allow_new_head},
            "validation": {
                "atol": self.atol,
                "seed": OnnxConfig.DUMMY_SEED,
                "deltas": [VALIDATION_BATCH_DELTA, VALIDATION_SEQUENCE_DELTA, VALIDATION_PAST_DELTA],
            },
            "versions": {name: versions.get(name) for name in ("hatch-onnx", "python", *wanted)},
        }


def _framework(model_framework: str, checkpoint: Path) -> str:
    from hatch_onnx.onnx.features import FeaturesManager

    return FeaturesManager.determine_framework(str(checkpoint), None if model_framework == "auto" else model_framework)


def make_plan(params: "ParamsFile", params_file: Path, model_types: Mapping[str, str], only: Optional[Iterable[str]] = None) -> list[Job]:
    from hatch_onnx.models import REGISTRY
    from hatch_onnx.params import checkpoint_path

    models = params.onnx.models
    selected = list(only) if only else list(models)
    for name in selected:
        if name not in models:
            raise ParamsError(f"--only {name}: no such model in {params_file} (models: {', '.join(models)})", key=f"onnx.models.{name}")
    jobs = []
    for name in selected:
        model = models[name]
        checkpoint = checkpoint_path(params_file, model)
        model_type = model_types[name]
        minimum = REGISTRY[model_type].onnx_config.DEFAULT_ONNX_OPSET
        wanted = model.opset if model.opset is not None else params.onnx.opset
        for feature in model.features:
            jobs.append(
                Job(
                    name=name,
                    feature=feature,
                    checkpoint=checkpoint,
                    model_type=model_type,
                    framework=_framework(model.framework, checkpoint),
                    opset=max(wanted or minimum, minimum),
                    atol=model.atol if model.atol is not None else params.onnx.atol,
                    exporter=model.exporter,
                    allow_new_head=model.allow_new_head,
                )
            )
    return jobs


# --- the plan memo -------------------------------------------------------------------------------
# Validating params.yaml (pydantic, the model registry, each checkpoint's config.json) costs more
# than everything else a fully cached build does. A plan is a pure function of the params bytes,
# the selection and what the checks read from disk, so it is memoised under the cache's state
# folder, keyed by the first two and guarded by the stats of the third, as DVC's state does.


def _watched(checkpoints: Iterable[Path]) -> dict[str, Any]:
    """What validation and framework detection read: config.json stats and which weights exist."""
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


def load_plan(params_file: Path, only: Optional[Iterable[str]] = None) -> tuple[list[Job], Optional[str]]:
    """The jobs of ``params_file`` and its configured cache location, validated once per content."""
    import xxhash
    import yaml

    from hatch_onnx.__about__ import __version__
    from hatch_onnx.cache import resolve_cache_root

    params_file = Path(params_file).resolve()
    try:
        raw = params_file.read_bytes()
        data = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml when built
        configured = data["onnx"].get("cache")
        state = resolve_cache_root(configured, params_file.parent) / "state" / "plans"
    except Exception:  # unreadable or malformed: the full validation says what is wrong
        state = None
    if state is not None:
        selection = json.dumps([str(params_file), sorted(only or []), __version__])
        memo = state / f"{xxhash.xxh3_128_hexdigest(raw + selection.encode())}.json"
        try:
            saved = json.loads(memo.read_text(encoding="utf-8"))
            jobs = [Job(**{**job, "checkpoint": Path(job["checkpoint"])}) for job in saved["jobs"]]
            if saved["watched"] == _watched(job.checkpoint for job in jobs):
                return jobs, saved["cache"]
        except (OSError, ValueError, KeyError, TypeError):
            pass

    from hatch_onnx.params import load_params

    params, model_types = load_params(params_file)
    jobs = make_plan(params, params_file, model_types, only)
    if state is not None:
        record = {
            "jobs": [{**dataclasses.asdict(job), "checkpoint": str(job.checkpoint)} for job in jobs],
            "watched": _watched(job.checkpoint for job in jobs),
            "cache": params.onnx.cache,
        }
        try:
            state.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
            tmp.write_text(json.dumps(record), encoding="utf-8")
            tmp.replace(memo)
        except OSError:  # a read-only cache still builds, only slower
            pass
    return jobs, params.onnx.cache


VERSIONED = tuple(sorted({"hatch-onnx", "onnxscript", *TOOLCHAIN["pt"], *TOOLCHAIN["tf"]}))


def installed_versions() -> dict[str, Optional[str]]:
    """This interpreter's toolchain, through ``importlib.metadata`` (never by importing)."""
    from importlib import metadata

    versions: dict[str, Optional[str]] = {"python": "%d.%d" % sys.version_info[:2]}
    for name in VERSIONED:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
            continue
        # The Version header is near the top of METADATA; ``dist.version`` would parse the
        # whole file with the email parser, the slowest step of a fully cached build.
        head = (dist.read_text("METADATA") or "").split("\n\n", 1)[0]
        found = re.search(r"^Version:\s*(\S+)", head, re.MULTILINE)
        versions[name] = found.group(1) if found else dist.version
    return versions


def toolchain_versions(python: Optional[str] = None) -> dict[str, Optional[str]]:
    """The toolchain of the interpreter that will run the exports (the worker's), ``None``: this one.

    Asked of the worker interpreter itself, in a worker's environment, even when its path is
    ours: virtual environments share a base interpreter (resolved paths compare equal across
    them), and a build frontend may hide this process's site-packages (pip's build isolation).
    """
    if python is None:
        return installed_versions()
    from hatch_onnx.worker import worker_command, worker_env

    result = subprocess.run(worker_command(python) + ["--versions"], capture_output=True, text=True, check=True,
                            env=worker_env("pt"))
    return json.loads(result.stdout)
