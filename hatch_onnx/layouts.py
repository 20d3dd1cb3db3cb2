"""Where a model folder's files go for each consumer, and what role each file plays.

A layout is a view of the cache: it names and places files when a folder is materialised
(``build --out``, the Hatch hook, ``export``'s OUTPUT), never changes a cache key or a graph.

=================  ===============================================================================
``optimum``        ``<feature>/model.onnx`` (+ ``model.onnx.data``), variants ``model.<variant>.onnx``:
                   Optimum's ``ORTModelFor*.from_pretrained(folder)`` and onnxruntime-genai
``transformers.js`` ``<feature>/onnx/model.onnx``, ``onnx/model_quantized.onnx`` (int8),
                   ``onnx/model_fp16.onnx`` (fp16), ``onnx/model_q4.onnx`` (int4), other variants
                   ``onnx/model_<variant>.onnx``
=================  ===============================================================================

Both put the model's config and preprocessor files at the feature folder's root, once; a
folder may carry both layouts (Optimum reads ``model.onnx`` at the root and ignores ``onnx/``).
The manifest records each file's ``role`` (:data:`ROLES`) and, for graphs, its ``layout``, so a
reader finds files by what they are, never by guessing from names. Light: standard library only.
"""

from __future__ import annotations

from typing import Optional

LAYOUTS = ("optimum", "transformers.js")
DEFAULT_LAYOUTS = ("optimum",)

GRAPH, GRAPH_DATA, VARIANT, CONFIG, GENERATION_CONFIG, PREPROCESSOR, GENAI_CONFIG, GRAPH_SET_MEMBER = (
    "graph", "graph-data", "variant", "config", "generation-config", "preprocessor", "genai-config", "graph-set-member")
ROLES = (GRAPH, GRAPH_DATA, VARIANT, CONFIG, GENERATION_CONFIG, PREPROCESSOR, GENAI_CONFIG, GRAPH_SET_MEMBER)
# An encoder-decoder's graph set (hatch_onnx.graph_sets), beside its one-step model.onnx: placed
# as model.onnx's side files are (at the root for Optimum, under onnx/ for transformers.js).
GRAPH_SET = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx")


def role_of_entry_file(name: str) -> str:
    """The role of a file of an export's cache entry: its graph, a graph-set member, or a graph's external data."""
    if name == "model.onnx":
        return GRAPH
    return GRAPH_SET_MEMBER if name in GRAPH_SET else GRAPH_DATA

# transformers.js's file name per variant (its ``dtype`` option: q8 -> _quantized, fp16 -> _fp16, q4 -> _q4).
_TRANSFORMERS_JS_SUFFIX = {"int8": "_quantized", "fp16": "_fp16", "int4": "_q4"}
GENAI_CONFIG_FILE = "genai_config.json"


def as_layouts(value: "str | list[str] | tuple[str, ...]") -> tuple[str, ...]:
    """A ``layout`` setting (one name, or a list for a folder that carries several) as a tuple, in ``LAYOUTS`` order."""
    names = [value] if isinstance(value, str) else list(value)
    unknown = [name for name in names if name not in LAYOUTS]
    if unknown or not names:
        raise ValueError(f"unknown layout {(unknown or [''])[0]!r}; choose from {', '.join(LAYOUTS)}")
    return tuple(name for name in LAYOUTS if name in names)


def graph_path(layout: str, variant: Optional[str] = None) -> str:
    """Where a feature's graph (or one of its variants) goes in ``layout``, relative to the feature folder."""
    if layout == "optimum":
        return "model.onnx" if variant is None else f"model.{variant}.onnx"
    if layout == "transformers.js":
        suffix = "" if variant is None else _TRANSFORMERS_JS_SUFFIX.get(variant, f"_{variant}")
        return f"onnx/model{suffix}.onnx"
    raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def placed(layout: str, name: str, variant: Optional[str] = None) -> str:
    """Where a graph entry's file ``name`` (``model.onnx`` or its ``model.onnx.data``) goes in ``layout``.

    External data keeps its name beside its graph: the graph refers to it by that name.
    """
    graph = graph_path(layout, variant)
    folder = graph.rpartition("/")[0]
    if name == "model.onnx":
        return graph
    return f"{folder}/{name}" if folder else name


def role_of_checkpoint_file(name: str) -> str:
    """The role of a file copied from the checkpoint (:data:`hatch_onnx.checkpoints.SIDE_FILES`)."""
    if name == "config.json":
        return CONFIG
    if name == "generation_config.json":
        return GENERATION_CONFIG
    return PREPROCESSOR


def primary(layouts: tuple[str, ...]) -> str:
    """The layout whose graph a loader opens when a folder carries several: Optimum's, if present."""
    return "optimum" if "optimum" in layouts else layouts[0]
