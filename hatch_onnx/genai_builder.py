"""``exporter: genai``: onnxruntime-genai's model builder makes the graph; this project validates, caches and ships it.

The builder writes fused CPU graphs (``GroupQueryAttention``, ``SkipSimplifiedLayerNormalization``,
``MatMulNBits`` for int4) straight from a checkpoint's weights, and checks nothing. Here it runs
as ``python -m onnxruntime_genai.models.builder -i CHECKPOINT -o OUT -p fp32|fp16 -e cpu -c CACHE``
in a subprocess (:func:`build`), its output captured (a failure is one line: its last), and its
graph then goes through the same validation as every export (:mod:`hatch_onnx.validation`, and
generation: :mod:`hatch_onnx.generation`) before it is moved into place.

Which exports: ``causal-lm-with-past`` of PyTorch checkpoints whose model type the builder
makes (:data:`BUILDER_ARCHITECTURES`: the type and the ``architectures[0]`` the builder
dispatches on), whose attention head size is a multiple of 16 (onnxruntime's CPU
``GroupQueryAttention`` refuses others at run time), on the transformers 5 line (the builder
imports transformers 5's classes). Everything else is refused by :func:`check` (exit 2) before
any model loads.

**The genai interface** differs from the default exporter's pinned one (which is unchanged):

================  =====================================================================================
inputs            ``input_ids`` int64 (batch_size, sequence_length); ``attention_mask`` int64
                  (batch_size, total_sequence_length); then every layer's ``past_key_values.%d.key``,
                  then every layer's ``past_key_values.%d.value`` (float, (batch_size, kv_heads,
                  past_sequence_length, head_size)). **No** ``position_ids``: GroupQueryAttention
                  applies the rotary positions itself, from the mask's row sums.
outputs           ``logits`` (batch_size, sequence_length, vocab); every ``present.%d.key``, then every
                  ``present.%d.value`` (batch_size, kv_heads, total_sequence_length, head_size)
batch             any batch for a prompt (no past) or a one-token step; a sequence over a past (chunked
                  prefill) at batch 1 only (GroupQueryAttention on CPU refuses more), so the one-step
                  validation draw is one row (sequence 11 over a past of 7) and the batched cases are
                  validated by generation.
padding           **right**: a row's tokens are the first ``attention_mask[row].sum()`` positions of the
                  cache and the sequence; a row's positions are counted from index 0. A left-padded
                  batch decodes its shorter rows wrongly (measured: logits off by 6 on the tiny Qwen3),
                  so validation by generation feeds this graph right-padded prompts and reads each row's
                  prefill logits at its last real token (``padding: right`` in its figures).
cache buffer      the builder's ``genai_config.json`` ships (not ours: :mod:`hatch_onnx.genai`) and says
                  ``past_present_share_buffer: true``: onnxruntime-genai preallocates one buffer of
                  ``max_length``. Our validation runs the graph without sharing (each present a new
                  tensor, past + new), which the graph also accepts.
files             ``model.onnx`` and always ``model.onnx.data`` (the builder writes external data at any
                  size), renamed with the graph when the output is another ``.onnx`` name (the graph's
                  external-data references rewritten to match), and ``genai_config.json`` (its decoder
                  ``filename`` set to where each layout places the graph). The builder's re-saved tokenizer
                  files are dropped: the checkpoint's own preprocessor files ship, as for every export.
opset             the builder's own (22 from onnxruntime-genai 0.18), not the job's ``opset``; the report
                  records the graph's.
================  =====================================================================================

Light at import: the checks read ``config.json`` only; onnx is imported by the functions that use it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from hatch_onnx.errors import BadInputError, ExportError
from hatch_onnx.layouts import GENAI_CONFIG_FILE

EXPORTER = "genai"
FEATURE = "causal-lm-with-past"
DISTRIBUTION = "onnxruntime-genai"
# Our model type -> the ``architectures[0]`` onnxruntime-genai 0.18's builder makes a decoder of
# (builder.py's dispatch): the intersection of its list with ours. Not GPT-2's family (the
# builder has none), nor OLMo-2 (it has OLMo 1 only).
BUILDER_ARCHITECTURES: Mapping[str, str] = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3-text": "Gemma3ForCausalLM",
    "granite": "GraniteForCausalLM", "smollm3": "SmolLM3ForCausalLM",
}
# The request's dtype -> the builder's --precision (its int4 is not an export of ours: see README).
PRECISIONS: Mapping[str, str] = {"float32": "fp32", "float16": "fp16"}
# onnxruntime's CPU GroupQueryAttention: "head_size shall be a multiple of 16".
HEAD_SIZE_MULTIPLE = 16


def applies(exporter: Optional[str]) -> bool:
    return exporter == EXPORTER


def check(model_dir: Path, model_type: str, feature: str, framework: str, dtype: str, transformers_major: Optional[int],
          check_installed: bool = True) -> None:
    """Refuse (:class:`BadInputError`, exit 2) what the builder cannot make, reading config.json only."""
    where = f"{model_dir}: exporter genai"
    if framework != "pt":
        raise BadInputError(f"{where} builds from PyTorch checkpoints only; this one is {framework}")
    if feature != FEATURE:
        raise BadInputError(f"{where} exports {FEATURE} only, not feature {feature!r}")
    if model_type not in BUILDER_ARCHITECTURES:
        raise BadInputError(f"{where}: model type {model_type!r} is not one onnxruntime-genai's builder makes "
                            f"(it makes: {', '.join(BUILDER_ARCHITECTURES)})")
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    architecture = (config.get("architectures") or [None])[0]
    if architecture != BUILDER_ARCHITECTURES[model_type]:
        raise BadInputError(f"{where}: architectures[0] is {architecture!r}; the builder makes {model_type} from "
                            f"{BUILDER_ARCHITECTURES[model_type]!r} only")
    heads = int(config.get("num_attention_heads") or 1)
    head_size = int(config.get("head_dim") or int(config.get("hidden_size", 0)) // heads)
    if head_size % HEAD_SIZE_MULTIPLE:
        raise BadInputError(f"{where}: head size {head_size}: onnxruntime's CPU GroupQueryAttention needs a multiple of "
                            f"{HEAD_SIZE_MULTIPLE}")
    if dtype not in PRECISIONS:
        raise BadInputError(f"{where}: dtype {dtype}: choose {' or '.join(PRECISIONS)}")
    if transformers_major is not None and transformers_major < 5:
        raise BadInputError(f"{where}: onnxruntime-genai's builder needs transformers 5; this interpreter has transformers "
                            f"{transformers_major} (run the job with the transformers 5 line)")
    if check_installed:
        from importlib.metadata import PackageNotFoundError, version

        try:
            version(DISTRIBUTION)
        except PackageNotFoundError:
            raise BadInputError(f"{where}: {DISTRIBUTION} is not installed (pip install 'hatch-onnx[genai]')") from None


def onnx_config_for(support: Any, feature: str, exporter: Optional[str], model_config: Any) -> Any:
    """The ONNX config an export of ``feature`` (and its variants) is validated with: the builder's
    interface (:func:`interface_config`) for ``exporter: genai``, else the feature's own."""
    if applies(exporter):
        return interface_config(support, model_config)
    return support.config_for(feature)(model_config)


def interface_config(support: Any, model_config: Any) -> Any:
    """The ONNX config that describes the builder's graph: the model type's config with genai's interface.

    Validation reads the graph's input and output names (and their order) from it, draws its
    inputs without ``position_ids`` and without left padding, and runs the reference model on
    them; generation reads :attr:`PADDING_SIDE`.
    """
    base = support.onnx_config
    genai_class = type(f"Genai{base.__name__}", (GenaiInterface, base), {})
    return genai_class.with_past(model_config, task="causal-lm")


class GenaiInterface:
    """A mixin over a rotary decoder's config: the builder's names, order and axes (see the module docstring)."""

    POSITION_IDS = False  # the graph takes none: positions come from the mask (and the draw pads nothing)
    PADDING_SIDE = "right"
    # "batch_size must be 1 when sequence_length > 1 and past context is given" (GroupQueryAttention on
    # CPU): the one-step validation draw (a sequence over a past) is one row; generation runs batch 2.
    PAST_CONTINUATION_BATCH = 1

    @property
    def inputs(self) -> Mapping[str, Mapping[int, str]]:
        common: dict = OrderedDict({"input_ids": {0: "batch_size", 1: "sequence_length"},
                                    "attention_mask": {0: "batch_size", 1: "total_sequence_length"}})
        for kind in ("key", "value"):
            for i in range(self.num_layers):
                common[f"past_key_values.{i}.{kind}"] = {0: "batch_size", 2: "past_sequence_length"}
        return common

    @property
    def outputs(self) -> Mapping[str, Mapping[int, str]]:
        common: dict = OrderedDict({"logits": {0: "batch_size", 1: "sequence_length"}})
        for kind in ("key", "value"):
            for i in range(self.num_layers):
                common[f"present.{i}.{kind}"] = {0: "batch_size", 2: "total_sequence_length"}
        return common


def build(model_dir: Path, staged: Path, dtype: str, python: Optional[str] = None,
          log: Callable[[str], Any] = lambda line: None) -> tuple[list[str], list[str]]:
    """Run the builder into a folder beside ``staged`` and move its graph to ``staged`` (+ ``.data``) and its
    genai_config.json beside it; returns the graph's (inputs, outputs)."""
    import onnx

    work = staged.parent / ".genai-builder"
    out, cache = work / "out", work / "cache"
    command = [python or sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(Path(model_dir).absolute()),
               "-o", str(out), "-p", PRECISIONS[dtype], "-e", "cpu", "-c", str(cache)]
    env = {**os.environ, "USE_TF": "0", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    try:
        run = subprocess.run(command, cwd=str(staged.parent), env=env, capture_output=True, text=True, errors="replace")
        lines = [line.strip() for line in (run.stdout + "\n" + run.stderr).replace("\r", "\n").splitlines() if line.strip()]
        if run.returncode != 0 or not (out / "model.onnx").is_file():
            last = lines[-1] if lines else f"exit code {run.returncode}"
            raise ExportError(f"{model_dir}: onnxruntime-genai's builder failed: {last}")
        log(f"onnxruntime-genai's builder wrote {', '.join(sorted(p.name for p in out.iterdir()))}")
        graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
        data_name = f"{staged.name}.data"
        datas = set()
        for tensor in _tensors_with_external_data(graph):
            for entry in tensor.external_data:
                if entry.key == "location":
                    datas.add(entry.value)
                    entry.value = data_name
        if len(datas) > 1:
            raise ExportError(f"{model_dir}: onnxruntime-genai's builder wrote {len(datas)} external-data files; one is expected")
        if datas:
            (out / datas.pop()).replace(staged.parent / data_name)
        if staged.name == "model.onnx":  # unchanged references: the builder's own bytes
            (out / "model.onnx").replace(staged)
        else:
            onnx.save(graph, str(staged))
        if staged.name == "model.onnx" and (out / GENAI_CONFIG_FILE).is_file():
            (out / GENAI_CONFIG_FILE).replace(staged.parent / GENAI_CONFIG_FILE)
        return [i.name for i in graph.graph.input], [o.name for o in graph.graph.output]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tensors_with_external_data(graph: Any):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [tensor for tensor in _get_all_tensors(graph) if uses_external_data(tensor)]


def graph_opset(graph: Path) -> int:
    """The default-domain opset the builder wrote."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def placed_config_text(text: str, graph_file: str) -> str:
    """The builder's ``genai_config.json`` with its decoder's ``filename`` where a layout places the graph."""
    config = json.loads(text)
    config["model"]["decoder"]["filename"] = graph_file
    return json.dumps(config, indent=4) + "\n"
