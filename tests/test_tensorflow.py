"""TensorFlow checkpoints: detection, tf2onnx export with our op handlers, validation against TF,
parity with PyTorch, and framework isolation.

transformers decides at import time whether TensorFlow exists, and this process imported it
with TensorFlow off (conftest: USE_TF=0). So the TF exports run in subprocesses that run this
file as a script (``python tests/test_tensorflow.py RESULTS.json OUT JOB...``): each imports
TensorFlow once, exports and validates its share of the (architecture, feature) pairs and the
special checks, and writes one JSON result per job. The tests below read those results;
parity and isolation run here and in their own subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from hatch_onnx import generation, graph_sets
from hatch_onnx.models import FEATURE_TO_TF_AUTOMODEL, REGISTRY, feature_to_task, tf_features, tf_model_types

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "fixtures" / "checkpoints"
PAIRS = [(model_type, feature) for model_type in tf_model_types() for feature in tf_features(model_type)]
# Heads the fixtures have no weights for (they are saved from their MLM / LM / classifier model),
# unless it is the fixture's own head (PARITY's task: LayoutLMv3's token classifier, Segformer's
# segmentation head).
NEW_HEAD_TASKS = {"sequence-classification", "token-classification", "multiple-choice", "question-answering", "image-classification"}
# Longformer's default graph outputs the pooler's output too, which its MLM fixture has no weights for.
NEW_HEAD_PAIRS = {("longformer", "default")}
# Per architecture, the feature whose weights the fixture holds, caches included where there are.
PARITY = {
    "albert": "masked-lm", "bart": "seq2seq-lm-with-past", "bert": "masked-lm", "convnext": "image-classification",
    "deberta-v2": "masked-lm", "distilbert": "masked-lm", "electra": "masked-lm", "gpt2": "causal-lm-with-past",
    "resnet": "image-classification", "roberta": "masked-lm", "t5": "seq2seq-lm-with-past", "vit": "image-classification",
    "whisper": "speech2seq-lm-with-past", "xlm-roberta": "masked-lm",
    # text encoders
    "camembert": "masked-lm", "convbert": "masked-lm", "deberta": "masked-lm", "flaubert": "masked-lm", "layoutlm": "masked-lm",
    "mobilebert": "masked-lm", "rembert": "masked-lm", "roformer": "masked-lm", "xlm": "masked-lm",
    # decoders and encoder-decoders
    "gptj": "causal-lm-with-past", "mt5": "seq2seq-lm-with-past", "marian": "seq2seq-lm-with-past",
    "mbart": "seq2seq-lm-with-past", "blenderbot": "seq2seq-lm-with-past", "blenderbot-small": "seq2seq-lm-with-past",
    # vision and multimodal
    "data2vec-vision": "image-classification", "deit": "image-classification", "mobilevit": "image-classification",
    "segformer": "semantic-segmentation", "swin": "image-classification", "clip": "default", "groupvit": "default",
    "layoutlmv3": "token-classification", "longformer": "masked-lm",
}
# TF classes transformers 4.57 has that the registry does not declare (yet), with the reason.
NOT_YET_TF = {
    ("mistral", task): "TFMistral* exists in transformers 4.57; mistral came in for PyTorch (988e9a5), no TF fixture yet"
    for task in ("default", "causal-lm", "sequence-classification")
}
# TF fixtures with other weights than their PyTorch twin (fixtures/generate_tf.py, NARROWER): no parity.
NO_PARITY = {"vision-encoder-decoder": "vision2seq-lm"}
# The graph interfaces the PyTorch matrix pins (tests/test_export_matrix.py): a TF export has the same.
INTERFACES = Path(__file__).parent / "data" / "graph_interfaces.json"
INSTALL_HINT = "pip install 'hatch-onnx[tf]'"

pytestmark = pytest.mark.tf  # the TensorFlow path: transformers 4.57's line only


def tf_checkpoint(model_type: str) -> Path:
    return CHECKPOINTS / f"{model_type}-tf-tiny"


def pt_checkpoint(model_type: str) -> Path:
    return CHECKPOINTS / f"{model_type}-tiny"


# =============================================================================================
# The driver: runs in a subprocess with TensorFlow on, one JSON result per job.
# =============================================================================================


def _export(model_type: str, feature: str, target: Path, **request: Any) -> dict:
    from hatch_onnx.exporting import ExportRequest, export_checkpoint

    request.setdefault("allow_new_head", True)
    return export_checkpoint(ExportRequest(model=tf_checkpoint(model_type), feature=feature, **request), target, log=lambda line: None)


def _run_pair(out: Path, model_type: str, feature: str) -> dict:
    import onnx

    target = out / model_type / feature
    report = _export(model_type, feature, target)
    onnx.checker.check_model(str(target / "model.onnx"))
    graph = onnx.load(str(target / "model.onnx")).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}
    return {"report": report, "dims": dims, "files": sorted(p.name for p in target.iterdir()), "torch_imported": "torch" in sys.modules}


def _check_table(out: Path) -> dict:
    """Which of our architectures transformers has a TF class for, per task."""
    import transformers
    from transformers.models.auto import modeling_tf_auto as auto

    mappings = {
        "default": auto.TF_MODEL_MAPPING_NAMES,
        "masked-lm": auto.TF_MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        "causal-lm": auto.TF_MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "seq2seq-lm": auto.TF_MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
        "sequence-classification": auto.TF_MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "token-classification": auto.TF_MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
        "multiple-choice": auto.TF_MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES,
        "question-answering": auto.TF_MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
        "image-classification": auto.TF_MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        "masked-im": auto.TF_MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES,
        "speech2seq-lm": auto.TF_MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
        "semantic-segmentation": auto.TF_MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
        "vision2seq-lm": auto.TF_MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES,
    }
    from hatch_onnx.loading import TF_MISSING_CONFIG_ATTRIBUTES

    unbuildable = {}  # the TF classes the loader sets config attributes for, built without them
    for model_type, task in TF_MISSING_CONFIG_ATTRIBUTES:
        config = transformers.AutoConfig.from_pretrained(tf_checkpoint(model_type), local_files_only=True)
        try:
            getattr(transformers, FEATURE_TO_TF_AUTOMODEL[task]).from_config(config)
            unbuildable[f"{model_type}:{task}"] = None
        except AttributeError as exc:
            unbuildable[f"{model_type}:{task}"] = str(exc)
    return {
        "unbuildable": unbuildable,
        "tasks": {task: sorted(t for t in REGISTRY if t in names or t.replace("-", "_") in names) for task, names in mappings.items()},
        "auto_classes": {task: isinstance(getattr(transformers, name, None), type) for task, name in FEATURE_TO_TF_AUTOMODEL.items()},
    }


def _check_without_erfc_handler(out: Path) -> dict:
    """tf2onnx alone on today's TF: the GELU's Erfc stays unconverted; export must refuse, write nothing."""
    from tf2onnx.handler import tf_op

    from hatch_onnx.errors import ExportError
    from hatch_onnx.frameworks import tensorflow as tfx

    tfx.register_op_handlers()
    version = tfx.OP_HANDLERS["Erfc"][0]
    handlers = tf_op.get_opsets()[""][version]
    saved = handlers.pop("Erfc")
    target = out / "without-erfc"
    try:
        _export("bert", "default", target)
    except ExportError as exc:
        return {"error": str(exc), "left": sorted(str(p.relative_to(target)) for p in target.rglob("*"))}
    finally:
        handlers["Erfc"] = saved
    return {"error": None}


def _check_large_model(out: Path) -> dict:
    """The >2 GiB path (tf2onnx's large_model), on a tiny model with the limit lowered."""
    import onnx

    import hatch_onnx.config as config_module

    saved = config_module.EXTERNAL_DATA_THRESHOLD
    config_module.EXTERNAL_DATA_THRESHOLD = 512
    try:
        report = _export("bert", "default", out / "large")
    finally:
        config_module.EXTERNAL_DATA_THRESHOLD = saved
    graph = onnx.load(str(out / "large" / "model.onnx"), load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    return {
        "files": report["files"],
        "external": len(external),
        "locations": sorted({e.value for t in external for e in t.external_data if e.key == "location"}),
        "outputs": report["validation"]["outputs"],
    }


def _check_determinism(out: Path) -> dict:
    """The same export twice in one process, another model in between: the same bytes."""
    _export("bert", "default", out / "det-1")
    _export("gpt2", "causal-lm-with-past", out / "det-gpt2")
    _export("bert", "default", out / "det-2")
    return {"same": (out / "det-1" / "model.onnx").read_bytes() == (out / "det-2" / "model.onnx").read_bytes()}


def _check_new_head(out: Path) -> dict:
    """Without --allow-new-head: a classifier the checkpoint lacks is refused, an unused pooler is not."""
    from hatch_onnx.errors import MissingHeadWeightsError

    _export("bert", "default", out / "head-default", allow_new_head=False)
    try:
        _export("bert", "sequence-classification", out / "head-cls", allow_new_head=False)
    except MissingHeadWeightsError as exc:
        return {"error": str(exc), "missing": exc.missing, "exit_code": exc.exit_code}
    return {"error": None}


def _check_changed_model_fails_the_set(out: Path, model_type: str = "t5", feature: str = "seq2seq-lm-with-past",
                                      weight: str = "/decoder/", scale: float = 1.01) -> dict:
    """A TF graph set, then the first decoder matrix whose name holds ``weight`` scaled by ``scale``: the chain's
    generation check must fail (T5's and Whisper's, each against one pass of the TF model over the chosen tokens)."""
    from hatch_onnx.errors import GenerationError
    from hatch_onnx.loading import load_model
    from hatch_onnx.validation import Tolerance

    model, _ = load_model(feature, str(tf_checkpoint(model_type)), "tf")
    support = REGISTRY[model_type]
    config = support.config_for(feature)(model.config)
    folder = out / f"set-changed-model-{model_type}"
    folder.mkdir()
    graph_sets.export_set(model, config, support.opset(None, "tf2onnx"), folder)
    tolerance = Tolerance(atol=config.atol_for_validation)
    before = graph_sets.validate_chain(folder, model, config, tolerance)
    variable = next(v for v in model.weights if "/decoder/" in v.name and weight in v.name and len(v.shape) == 2)
    variable.assign(variable * scale)
    try:
        graph_sets.validate_chain(folder, model, config, tolerance)
    except GenerationError as exc:
        return {"before": before["tokens_equal"], "reference": before.get("reference"), "error": str(exc), "variable": variable.name}
    return {"before": before["tokens_equal"], "reference": before.get("reference"), "error": None, "variable": variable.name}


CHECKS: dict[str, Callable[[Path], dict]] = {
    "table": _check_table,
    "without-erfc-handler": _check_without_erfc_handler,
    "large-model": _check_large_model,
    "determinism": _check_determinism,
    "new-head": _check_new_head,
    "set-changed-model": _check_changed_model_fails_the_set,
    # Whisper's tiny logits (|x| < 0.1) against its atol 1e-3: a cross-attention value matrix 10% larger moves them past it
    "set-changed-model-whisper": lambda out: _check_changed_model_fails_the_set(out, "whisper", "speech2seq-lm-with-past",
                                                                                "encoder_attn/v_proj", 1.1),
}


def driver(results_path: Path, out: Path, jobs: list[str]) -> None:
    results: dict[str, dict] = {}
    for job in jobs:
        kind, _, rest = job.partition(":")
        started = time.perf_counter()
        try:
            payload = _run_pair(out, *rest.split(":")) if kind == "pair" else CHECKS[rest](out)
            results[job] = {"ok": True, **payload}
        except Exception as exc:  # recorded for the test that reads this job
            results[job] = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0], "type": type(exc).__name__}
        results[job]["seconds"] = round(time.perf_counter() - started, 2)
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))  # after every job: a crash keeps the rest
        tmp.replace(results_path)


if __name__ == "__main__":
    driver(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
    sys.exit(0)


# =============================================================================================
# The tests.
# =============================================================================================

# Seconds per export (measured; 1.5 for the others), to balance the shards: autograph and
# control flow (encoder-decoders, DeBERTa, Longformer) and many small layers (vision) cost more.
COST = {
    "longformer": 12.0, "mobilevit": 10.0, "swin": 8.0, "deberta": 8.0, "blenderbot": 7.5, "groupvit": 7.0,
    "clip": 5.0, "bart": 4.5, "mbart": 4.0, "deberta-v2": 3.5, "marian": 3.5, "blenderbot-small": 3.5,
    "whisper": 3.0, "segformer": 3.0, "convbert": 2.5, "roformer": 2.5, "gptj": 2.5, "t5": 2.0, "mt5": 2.0,
    # checks that export graph sets (each set: three tf2onnx exports, a merge, a generation)
    "set-changed-model": 10.0, "set-changed-model-whisper": 10.0,
}
# An encoder-decoder's with-past job also exports its graph set: about 8 s more.
GRAPH_SET_COST = 8.0
SHARDS = max(1, min(2, os.cpu_count() or 1))


def shard_jobs(jobs: list[str], shards: int) -> list[list[str]]:
    """One architecture's jobs in one shard (TF caches its traced code), heaviest first to the lightest shard."""
    groups: dict[str, list[str]] = {}
    for job in jobs:
        groups.setdefault(job.split(":")[1], []).append(job)
    out: list[list[str]] = [[] for _ in range(shards)]
    loads = [0.0] * shards
    def cost(name: str, group: list[str]) -> float:
        return COST.get(name, 1.5) * len(group) + GRAPH_SET_COST * sum(
            1 for job in group if job.startswith("pair:") and graph_sets.applies(*job.split(":")[1:], "tf"))

    for name, group in sorted(groups.items(), key=lambda item: (-cost(*item), item[0])):
        k = loads.index(min(loads))
        out[k].extend(group)
        loads[k] += cost(name, group)
    return out


def tf_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("USE_TF", "USE_TORCH")}
    env.update(USE_TF="1", USE_TORCH="0", TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class TFRuns:
    def __init__(self, out: Path, results: dict[str, dict], logs: list[Path], jobs: list[str]):
        self.out, self.results, self.logs, self.jobs = out, results, logs, jobs

    def get(self, job: str) -> dict:
        if job not in self.jobs:
            pytest.fail(f"{job} was not run: the tests that read it must name it (jobs_of, TEST_JOBS)")
        if job not in self.results:
            tails = "\n".join(log.read_text(errors="replace")[-3000:] for log in self.logs if log.exists())
            pytest.fail(f"no result for {job}: a TF driver died; its output ends with:\n{tails}")
        result = self.results[job]
        if not result["ok"]:
            pytest.fail(f"{job}: {result['error']}")
        return result


# The driver jobs each test reads, beyond the one its parameters name (test_tf_export_and_validate: its pair;
# test_parity_with_pytorch: its architecture's PARITY pair).
TEST_JOBS = {
    "test_tf_task_table_matches_transformers": ["check:table"],
    "test_unconverted_op_is_an_export_error_and_no_file": ["check:without-erfc-handler"],
    "test_large_model_path_writes_one_data_file": ["check:large-model"],
    "test_tf_exports_are_byte_reproducible": ["check:determinism", "pair:bert:default", "pair:gpt2:causal-lm-with-past"],
    "test_new_head_refused_unless_allowed": ["check:new-head"],
    "test_tf_graph_set_chain_fails_when_the_model_generates_otherwise": ["check:set-changed-model", "check:set-changed-model-whisper"],
    "test_tf_job_never_imports_torch": ["pair:distilbert:default"],
}


def jobs_of(item: pytest.Item) -> list[str]:
    """The driver jobs a collected test reads from ``tf_runs``."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = getattr(item, "originalname", item.name)
    if name == "test_tf_export_and_validate":
        return [f"pair:{params['model_type']}:{params['feature']}"]
    if name == "test_parity_with_pytorch":
        return [f"pair:{params['model_type']}:{PARITY[params['model_type']]}"]
    return TEST_JOBS.get(name, [])


@pytest.fixture(scope="session")
def tf_runs(tmp_path_factory, request) -> TFRuns:
    """Every job the session's selected tests read (``-k whisper``: Whisper's pairs only), in shards."""
    out = tmp_path_factory.mktemp("tf-exports")
    wanted = {job for item in request.session.items if "tf_runs" in getattr(item, "fixturenames", ()) for job in jobs_of(item)}
    jobs = [job for job in [f"pair:{m}:{f}" for m, f in PAIRS] + [f"check:{name}" for name in CHECKS] if job in wanted]
    procs, logs = [], []
    for k, shard in enumerate(shard_jobs(jobs, SHARDS)):
        if not shard:
            continue
        logs.append(out / f"shard-{k}.log")
        with open(logs[-1], "w") as log:
            command = [sys.executable, __file__, str(out / f"shard-{k}.json"), str(out), *shard]
            procs.append(subprocess.Popen(command, env=tf_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    try:
        for proc in procs:
            proc.wait(timeout=1800)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results: dict[str, dict] = {}
    for k in range(SHARDS):
        if (out / f"shard-{k}.json").exists():
            results.update(json.loads((out / f"shard-{k}.json").read_text()))
    return TFRuns(out, results, logs, jobs)


def test_every_test_reading_tf_runs_names_its_jobs():
    """The session fixture runs only the jobs the selected tests name: each test that reads it names real jobs."""
    import inspect

    every = {f"pair:{m}:{f}" for m, f in PAIRS} | {f"check:{name}" for name in CHECKS}
    readers = {name for name, function in globals().items()
               if name.startswith("test_") and callable(function) and "tf_runs" in inspect.signature(function).parameters}
    assert readers == {*TEST_JOBS, "test_tf_export_and_validate", "test_parity_with_pytorch"}
    assert {job for jobs in TEST_JOBS.values() for job in jobs} <= every
    assert {f"pair:{m}:{f}" for m, f in PARITY.items()} <= every


def onnx_config(model_type: str, feature: str, checkpoint: Path):
    from transformers import AutoConfig

    return REGISTRY[model_type].config_for(feature)(AutoConfig.from_pretrained(checkpoint, local_files_only=True))


# --- the support matrix (no TensorFlow needed) ----------------------------------------------


def test_tf_features_follow_transformers_tf_classes():
    assert tf_features("bloom") == tf_features("gpt-neo") == ()  # no TF classes at all
    assert tf_features("gpt2") == ("default", "default-with-past", "causal-lm", "causal-lm-with-past", "sequence-classification")
    assert tf_features("bart") == ("default", "default-with-past", "seq2seq-lm", "seq2seq-lm-with-past", "sequence-classification")
    assert tf_features("electra") == tuple(f for f in REGISTRY["electra"].features if f != "causal-lm")
    assert tf_features("vit") == ("default", "image-classification")  # no TFViTForMaskedImageModeling
    assert tf_features("whisper") == REGISTRY["whisper"].features
    assert tf_features("xlm") == REGISTRY["xlm"].features  # multiple-choice too (the loader sets initializer_range)
    assert "multiple-choice" in tf_features("flaubert")
    assert tf_features("vision-encoder-decoder") == ("vision2seq-lm",)  # TFAutoModelForVision2Seq
    assert tf_model_types() == tuple(sorted({**PARITY, **NO_PARITY}))
    assert len(PAIRS) == 174
    for model_type, feature in PAIRS:
        assert feature in REGISTRY[model_type].features


def test_tf_features_import_no_framework():
    code = (
        "import sys; from hatch_onnx.models import tf_features; tf_features('bert'); "
        "print(sorted(m for m in ('tensorflow', 'tf2onnx', 'transformers', 'torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("model_type", tf_model_types())
def test_tf_fixture_holds_only_tensorflow_weights(model_type):
    from hatch_onnx.errors import FrameworkError
    from hatch_onnx.checkpoints import read_model_type
    from hatch_onnx.onnx.features import FeaturesManager

    folder = tf_checkpoint(model_type)
    names = {p.name for p in folder.iterdir()}
    assert "tf_model.h5" in names and not names & {"model.safetensors", "pytorch_model.bin"}
    assert read_model_type(folder).replace("_", "-") == model_type
    assert FeaturesManager.determine_framework(str(folder)) == "tf"
    with pytest.raises(FrameworkError, match="model.safetensors"):
        FeaturesManager.determine_framework(str(folder), "pt")
    # HDF5 spends ~1.2 kB per tensor: MobileViT's 347 small ones (its stages' depths are fixed) weigh more
    assert sum(p.stat().st_size for p in folder.iterdir()) < (900_000 if model_type == "mobilevit" else 600_000)


def test_feature_without_tf_class_is_bad_input(tmp_path):
    from hatch_onnx.errors import UnsupportedFeatureError
    from hatch_onnx.exporting import ExportRequest, export_checkpoint

    with pytest.raises(UnsupportedFeatureError, match="with TensorFlow; supported: default, default-with-past") as info:
        export_checkpoint(ExportRequest(model=tf_checkpoint("gpt2"), feature="token-classification"), tmp_path)
    assert info.value.exit_code == 2
    assert not any(tmp_path.iterdir())


def test_tf_job_after_transformers_loaded_without_tf_is_a_clear_error(tmp_path, monkeypatch):
    import transformers  # noqa: F401 - as this process did, with USE_TF=0

    from hatch_onnx.errors import FrameworkError
    from hatch_onnx.exporting import ExportRequest, export_checkpoint

    for name in ("USE_TF", "USE_TORCH", "TF_USE_LEGACY_KERAS"):  # the job sets them: restore them after
        original = os.environ.get(name)
        monkeypatch.setenv(name, original or "")
        if original is None:
            monkeypatch.delenv(name)
    with pytest.raises(FrameworkError, match="TensorFlow turned off .* in a process of their own"):
        export_checkpoint(ExportRequest(model=tf_checkpoint("bert")), tmp_path)


# --- every (architecture, TF feature), exported and validated against TensorFlow -------------


@pytest.mark.slow
@pytest.mark.parametrize("model_type, feature", PAIRS, ids=[f"{m}:{f}" for m, f in PAIRS])
def test_tf_export_and_validate(model_type, feature, tf_runs):
    result = tf_runs.get(f"pair:{model_type}:{feature}")
    report = result["report"]
    assert (report["framework"], report["exporter"]) == ("tf", "tf2onnx")
    # an encoder-decoder with past ships its graph set beside the one-step graph, as from PyTorch
    makes_set = graph_sets.applies(model_type, feature, "tf")
    assert result["files"] == sorted(["model.onnx", *(graph_sets.GRAPHS if makes_set else ())])
    assert not result["torch_imported"]
    config = onnx_config(model_type, feature, tf_checkpoint(model_type))
    assert list(report["validation"]["outputs"]) == list(config.outputs)
    for figures in report["validation"]["outputs"].values():
        assert figures["max_abs_diff"] <= figures["atol"] == config.atol_for_validation
    # dynamic axes carry the config's names (tf2onnx's own are unk__N)
    for name, axes in {**config.inputs, **config.outputs}.items():
        for axis, axis_name in axes.items():
            assert result["dims"][name][axis] == axis_name, (name, result["dims"][name])
    assert not [d for dims in result["dims"].values() for d in dims if isinstance(d, str) and "unk__" in d]
    # validation ran at other shapes than the export's
    first = next(iter(config.inputs))
    assert report["validation"]["inputs"][first][0] == config.default_batch_size + 1
    # a head the fixture has no weights for is reported (the fixtures are MLM / LM / classifier models)
    task = feature_to_task(feature)
    own = PARITY.get(model_type) or NO_PARITY[model_type]
    expected = (task in NEW_HEAD_TASKS and task != feature_to_task(own)) or (model_type, feature) in NEW_HEAD_PAIRS
    assert bool(report["new_head_weights"]) == expected, report["new_head_weights"]
    assert_pytorch_interface(f"{model_type}:{feature}", report["validation"]["graph"], {**config.inputs, **config.outputs})
    # decoders with past also generate, each step checked by one pass of the TF model (hatch_onnx.generation); graph sets by their chain;
    # graphs of hidden states (default-with-past) teacher-forced, against TF's forward over the whole sequence
    hidden = feature == "default-with-past" and (makes_set or generation.applies(config))
    if hidden:
        figures = report["validation"]["generation"]
        assert figures["mode"] == "teacher-forced" and figures["steps"] == generation.NEW_TOKENS and figures["max_diff"] <= report["atol"]
    elif generation.applies(config) or makes_set:
        figures = report["validation"]["generation"]
        assert figures["tokens_equal"] and figures["steps"] == generation.NEW_TOKENS and figures["max_logits_diff"] <= report["atol"]
        if makes_set and graph_sets.KINDS[(model_type, feature)].chain == "greedy-loop":  # Whisper: checked by TF, not PyTorch
            assert figures["mode"] == "greedy-loop" and figures["reference"] == "one TensorFlow pass over the chosen tokens, no cache", figures
            assert figures["tokens"][0] != figures["tokens"][1]  # the two rows' audio features decode differently
    else:
        assert "generation" not in report["validation"]
    if makes_set:  # each member validated against TF, with the interface the PyTorch set pinned (exactly)
        members = report["validation"]["graph_set"]["graphs"]
        assert set(members) == set(graph_sets.GRAPHS)
        pinned = json.loads(INTERFACES.read_text())
        for graph, figures in members.items():
            assert figures["max_abs_diff"] <= config.atol_for_validation, graph
            assert {"inputs": figures["inputs"], "outputs": figures["outputs"]} == pinned[f"{model_type}:{feature}:{graph}"], graph


def assert_pytorch_interface(pair: str, graph: dict, named_axes: dict) -> None:
    """The interface the PyTorch export of ``pair`` pinned: the same inputs and outputs in the same
    order, dtypes and ranks, the config's named axes and the fixed sizes. An axis the config leaves
    unnamed each exporter names (torch: ``Transposelogits_per_image_dim_1``) or fixes its own way."""
    pinned = json.loads(INTERFACES.read_text())[pair]
    for side in ("inputs", "outputs"):
        assert [(t["name"], t["dtype"], len(t["shape"])) for t in graph[side]] == [
            (t["name"], t["dtype"], len(t["shape"])) for t in pinned[side]
        ], side
        for ours, theirs in zip(graph[side], pinned[side]):
            for axis, (a, b) in enumerate(zip(ours["shape"], theirs["shape"])):
                if axis in named_axes[ours["name"]] or (isinstance(a, int) and isinstance(b, int)):
                    assert a == b, (ours["name"], ours["shape"], theirs["shape"])


@pytest.mark.slow
def test_tf_task_table_matches_transformers(tf_runs):
    table = tf_runs.get("check:table")
    for task, model_types in table["tasks"].items():
        declared = {m for m in REGISTRY if any(feature_to_task(f) == task for f in tf_features(m))}
        # (a TF class for a task the legacy list does not offer, as DeiT's masked-im, is no feature)
        offered = {m for m in REGISTRY if any(feature_to_task(f) == task for f in REGISTRY[m].features)}
        assert set(model_types) & offered == declared | {m for m, t in NOT_YET_TF if t == task}, task
    used = {feature_to_task(f) for m in REGISTRY for f in tf_features(m)}
    assert all(ok for task, ok in table["auto_classes"].items() if task in used), table["auto_classes"]
    # the loader's workaround is still needed: without it these classes cannot be built
    assert table["unbuildable"] and all("initializer_range" in (error or "") for error in table["unbuildable"].values()), table["unbuildable"]


@pytest.mark.slow
def test_unconverted_op_is_an_export_error_and_no_file(tf_runs):
    result = tf_runs.get("check:without-erfc-handler")
    assert result["error"] is not None, "tf2onnx converted Erfc alone: the handler may no longer be needed"
    assert "Erfc" in result["error"] and "onnxruntime cannot run" in result["error"]
    assert result["left"] == []  # no model.onnx, no staging folder


@pytest.mark.slow
def test_large_model_path_writes_one_data_file(tf_runs):
    result = tf_runs.get("check:large-model")
    assert result["files"] == ["model.onnx", "model.onnx.data"]
    assert result["external"] > 0 and result["locations"] == ["model.onnx.data"]
    assert all(o["max_abs_diff"] <= o["atol"] for o in result["outputs"].values())


@pytest.mark.slow
def test_tf_exports_are_byte_reproducible(tf_runs):
    assert tf_runs.get("check:determinism")["same"]
    tf_runs.get("pair:bert:default")
    tf_runs.get("pair:gpt2:causal-lm-with-past")
    # the matrix exported these too, at another time, into another folder
    out = tf_runs.out
    assert (out / "det-1" / "model.onnx").read_bytes() == (out / "bert" / "default" / "model.onnx").read_bytes()
    assert (out / "det-gpt2" / "model.onnx").read_bytes() == (out / "gpt2" / "causal-lm-with-past" / "model.onnx").read_bytes()
    # (across processes: test_tf_job_never_imports_torch)


@pytest.mark.slow
def test_new_head_refused_unless_allowed(tf_runs):
    result = tf_runs.get("check:new-head")
    assert result["error"] is not None and result["exit_code"] == 2
    assert "classifier" in result["missing"] and "--allow-new-head" in result["error"]


@pytest.mark.slow
def test_tf_graph_set_chain_fails_when_the_model_generates_otherwise(tf_runs):
    for check in ("set-changed-model", "set-changed-model-whisper"):
        result = tf_runs.get(f"check:{check}")
        assert result["before"] is True  # the same set passed against the unchanged model
        assert result["reference"] == "one TensorFlow pass over the chosen tokens, no cache"
        assert result["error"] is not None and "generation" in result["error"], result


# --- parity: the same weights through PyTorch and TensorFlow give the same graphs' outputs ----


def _run_onnx(path: Path, inputs: dict) -> dict:
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {node.name for node in session.get_inputs()}
    feed = {name: np.asarray(value) for name, value in inputs.items() if name in names}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_type",
    sorted(PARITY),
)
def test_parity_with_pytorch(model_type, tf_runs, tmp_path):
    import numpy as np

    from hatch_onnx.exporting import ExportRequest, export_checkpoint
    from hatch_onnx.validation import validation_inputs

    feature = PARITY[model_type]
    tf_runs.get(f"pair:{model_type}:{feature}")
    export_checkpoint(ExportRequest(model=pt_checkpoint(model_type), feature=feature, framework="pt"), tmp_path, log=lambda line: None)
    config = onnx_config(model_type, feature, pt_checkpoint(model_type))
    inputs = validation_inputs(config)  # seeded, at other shapes than either export's
    from_pt = _run_onnx(tmp_path / "model.onnx", inputs)
    from_tf = _run_onnx(tf_runs.out / model_type / feature / "model.onnx", inputs)
    assert list(from_pt) == list(from_tf) == list(config.outputs)
    for name in config.outputs:
        assert from_pt[name].shape == from_tf[name].shape, name
        diff = float(np.max(np.abs(from_pt[name].astype(np.float64) - from_tf[name])))
        assert diff <= config.atol_for_validation, f"{name}: {diff:.3g} > {config.atol_for_validation}"
    if graph_sets.applies(model_type, feature, "tf"):  # the graph sets' members, on the same seeded inputs
        for graph in graph_sets.GRAPHS:
            source = graph_sets.DECODER_WITH_PAST if graph == graph_sets.DECODER_MERGED else graph
            feed = graph_sets.dummy_inputs(config, source, graph_sets.VALIDATION_SHAPES, 7)
            if graph == graph_sets.DECODER_MERGED:
                feed = graph_sets.merged_feed(config, feed, use_cache=True)
            from_pt, from_tf = _run_onnx(tmp_path / graph, feed), _run_onnx(tf_runs.out / model_type / feature / graph, feed)
            assert list(from_pt) == list(from_tf)
            for name in from_pt:
                diff = float(np.max(np.abs(from_pt[name].astype(np.float64) - from_tf[name])))
                assert diff <= config.atol_for_validation, f"{graph}: {name}: {diff:.3g} > {config.atol_for_validation}"


# --- isolation: a job imports its own framework only; without the tf extra only TF jobs fail --

# Hides what the `tf` extra installs, as if absent: the finders report no such module.
HIDE_TF = """
import importlib.machinery, sys
class _WithoutTF(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "tf2onnx", "keras", "tensorboard"):
            return None
        return super().find_spec(name, path, target)
sys.meta_path[:] = [_WithoutTF if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""
CLI = """
import json, sys
from hatch_onnx.cli import main
code = main(sys.argv[1:])
print("RESULT " + json.dumps({"code": code, "imported": sorted(m for m in ("torch", "tensorflow", "tf2onnx") if m in sys.modules)}))
"""


def run_cli_alone(*args: str, hide_tf: bool = False) -> tuple[dict, str]:
    """``hatch-onnx ARGS`` in a fresh process whose environment says nothing about frameworks."""
    env = {k: v for k, v in os.environ.items() if k not in ("USE_TF", "USE_TORCH", "TF_USE_LEGACY_KERAS")}
    code = (HIDE_TF if hide_tf else "") + CLI
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1][len("RESULT "):]), proc.stderr


@pytest.mark.slow
def test_tf_job_never_imports_torch(tmp_path, tf_runs):
    result, stderr = run_cli_alone("export", "--model", str(tf_checkpoint("distilbert")), str(tmp_path))
    assert result == {"code": 0, "imported": ["tensorflow", "tf2onnx"]}, stderr
    # the CLI in a fresh process writes the bytes the test matrix's process wrote
    tf_runs.get("pair:distilbert:default")
    assert (tmp_path / "model.onnx").read_bytes() == (tf_runs.out / "distilbert" / "default" / "model.onnx").read_bytes()


@pytest.mark.slow
def test_pt_job_never_imports_tensorflow(tmp_path):
    result, stderr = run_cli_alone("export", "--model", str(pt_checkpoint("distilbert")), str(tmp_path))
    assert result == {"code": 0, "imported": ["torch"]}, stderr


@pytest.mark.slow
def test_without_tf_extra_only_tf_jobs_fail(tmp_path):
    result, stderr = run_cli_alone("export", "--model", str(tf_checkpoint("bert")), str(tmp_path / "tf"), hide_tf=True)
    assert result["code"] == 2 and INSTALL_HINT in stderr, stderr
    assert not (tmp_path / "tf" / "model.onnx").exists()
    result, stderr = run_cli_alone("export", "--model", str(pt_checkpoint("bert")), str(tmp_path / "pt"), hide_tf=True)
    assert result == {"code": 0, "imported": ["torch"]}, stderr
