"""``genai_config.json``: what onnxruntime-genai needs beside a decoder graph to generate from it.

Written beside every ``causal-lm-with-past`` graph of a model type that onnxruntime-genai
runs (:data:`GENAI_TYPES`), from the checkpoint's ``config.json`` and ``generation_config.json``
and the graph's own input and output names. The graph is ours (standard attention, flat
``past_key_values.%d.key`` / ``present.%d.key`` caches), so the config says so and asks for no
shared past/present buffer: our graphs return the whole cache, past and new, as a new tensor.
A with-past graph accepts an empty past, so one graph serves the prompt and every step, which
is how onnxruntime-genai starts. Light: standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

# Our model type -> onnxruntime-genai's ``model.type`` (0.18's list). genai runs its decoder-only
# types through one model class that feeds the graph by the names below. OLMo-2 has no type of
# its own there and runs as ``olmo``. genai's ``gpt2`` type means the legacy GPT-2 graph (one
# combined key/value cache per layer; ours refuses to load: "Model input was not found"), so
# the GPT-2 family's graphs, which follow the standard decoder-only contract, run as ``llama``.
GENAI_TYPES: Mapping[str, str] = {
    "gpt2": "llama", "gpt-neo": "llama", "gptj": "llama", "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
    "gemma2": "gemma2", "gemma3-text": "gemma3_text", "granite": "granite", "olmo2": "olmo", "smollm3": "smollm3",
}
FEATURE = "causal-lm-with-past"


def _first(config: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return None


def _token(value: Any) -> Any:
    """A token id, or the list of them genai accepts for eos."""
    return list(value) if isinstance(value, (list, tuple)) else value


def genai_config(model_type: str, feature: str, config: Mapping[str, Any], generation: Optional[Mapping[str, Any]],
                 inputs: Sequence[str], outputs: Sequence[str], filename: str) -> Optional[dict[str, Any]]:
    """The ``genai_config.json`` of a graph, or None when onnxruntime-genai cannot run it."""
    genai_type = GENAI_TYPES.get(model_type)
    if genai_type is None or feature != FEATURE or "logits" not in outputs:
        return None
    generation = generation or {}
    heads = int(_first(config, "num_attention_heads", "num_heads", "n_head"))
    hidden = int(_first(config, "hidden_size", "n_embd"))
    eos = _token(_first(generation, "eos_token_id") if "eos_token_id" in generation else config.get("eos_token_id"))
    pad = _first(generation, "pad_token_id")
    pad = pad if pad is not None else config.get("pad_token_id")
    if pad is None:  # genai pads the batch with it: eos stands for padding, as transformers' pipelines set it
        pad = eos[0] if isinstance(eos, list) else eos
    names = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids"}
    graph_inputs = {name: value for name, value in names.items() if name in inputs}
    context = int(_first(config, "max_position_embeddings", "n_positions", "n_ctx") or 2048)
    return {
        "model": {
            "bos_token_id": _first(generation, "bos_token_id") if "bos_token_id" in generation else config.get("bos_token_id"),
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": int(_first(config, "head_dim") or hidden // heads),
                "hidden_size": hidden,
                "inputs": {**graph_inputs, "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
                "num_attention_heads": heads,
                "num_hidden_layers": int(_first(config, "num_hidden_layers", "num_layers", "n_layer")),
                "num_key_value_heads": int(_first(config, "num_key_value_heads") or heads),
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": genai_type,
            "vocab_size": int(config["vocab_size"]),
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": bool(generation.get("do_sample", False)),
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": context,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            # Our graphs write a new present tensor (past + new) each step: no shared buffer.
            "past_present_share_buffer": False,
            "repetition_penalty": float(generation.get("repetition_penalty", 1.0)),
            "temperature": float(generation.get("temperature", 1.0)),
            "top_k": int(generation.get("top_k") or 50),
            "top_p": float(generation.get("top_p") or 1.0),
        },
    }


def genai_config_text(checkpoint: Path, model_type: str, feature: str, graph: Mapping[str, Any], filename: str) -> Optional[str]:
    """:func:`genai_config` as the file's text, from a checkpoint folder and a graph's interface
    (a validation report's ``graph``: ``inputs`` and ``outputs``, each a list of ``{"name": ...}``)."""

    def read(name: str) -> Optional[dict]:
        path = Path(checkpoint) / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    config = genai_config(model_type, feature, read("config.json") or {}, read("generation_config.json"),
                          [node["name"] for node in graph["inputs"]], [node["name"] for node in graph["outputs"]], filename)
    return None if config is None else json.dumps(config, indent=2, sort_keys=True) + "\n"
