"""An encoder-decoder's graph set from TensorFlow: the TF half of :mod:`hatch_onnx.graph_sets`.

The set's graphs, their names, inputs, outputs and dynamic axes are
:func:`hatch_onnx.graph_sets.interfaces`'s; the merge, the per-graph validation and the chain by
generation are :mod:`hatch_onnx.graph_sets`'s. This module gives the three TF callables the
graphs are traced from (each ``call(*inputs) -> tuple`` in the interface's order), and writes
each through :func:`hatch_onnx.frameworks.tensorflow.write_graph` (tf2onnx with our op
handlers, the interface's names and axes, refused unless onnxruntime loads it):

=============================  =========================================================================
``encoder_model.onnx``         ``model.get_encoder()`` on ``input_ids``, ``attention_mask``
``decoder_model.onnx``         the model with ``encoder_outputs`` given (the encoder does not run):
                               ``logits`` and the whole TF tuple cache, flattened to ``present.*``
``decoder_with_past_model``    the model with the flat past as its tuple cache and NaN encoder states
                               of the cross cache's length (never read: the cross cache replaces them,
                               as the one-step ``seq2seq-lm-with-past`` export does)
=============================  =========================================================================

``head`` names the decoders' first output: ``logits`` (``seq2seq-lm-with-past``) or
``last_hidden_state`` (``default-with-past``, whose model has no LM head). Graphs are written
inline (the PyTorch set's merge holds them in memory too). Light at import: TensorFlow is imported
by the functions that use it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Mapping

from hatch_onnx.config import apply_values_override

HEADS = ("logits", "last_hidden_state")


def _calls(model: Any, interfaces: Mapping[str, tuple[Mapping, Mapping]]) -> dict[str, Callable[..., tuple]]:
    """Each graph of ``interfaces`` (graph -> (inputs, outputs)) as a flat TF callable."""
    import tensorflow as tf
    from transformers.modeling_tf_outputs import TFBaseModelOutput

    from hatch_onnx import graph_sets
    from hatch_onnx.frameworks.tensorflow import _cache_from_flat, _encoder_placeholder, _present

    first_argument = next(iter(inspect.signature(model.call).parameters))

    def encoder(input_ids: Any, attention_mask: Any) -> tuple:
        out = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, training=False)
        return (out.last_hidden_state,)

    def decoder(input_names: list[str], output_names: list[str]) -> Callable[..., tuple]:
        head = output_names[0]
        if head not in HEADS:
            raise ValueError(f"a decoder's first output is one of {', '.join(HEADS)}, not {head!r}")

        def call(*tensors: Any) -> tuple:
            named = dict(zip(input_names, tensors))
            kwargs: dict[str, Any] = {"decoder_input_ids": named["input_ids"], "attention_mask": named["encoder_attention_mask"],
                                      "use_cache": True, "return_dict": True, "training": False}
            cache = _cache_from_flat(tf, model, named)
            if cache is None:
                kwargs["encoder_outputs"] = TFBaseModelOutput(last_hidden_state=named["encoder_hidden_states"])
            else:
                kwargs["past_key_values"] = cache
                kwargs["encoder_outputs"] = _encoder_placeholder(tf, model, named)
            kwargs.setdefault(first_argument, None)  # Keras insists that the first argument be passed
            out = model(**kwargs)
            return (out[head], *(_present(model, out.past_key_values, name) for name in output_names[1:]))

        return call

    calls = {}
    for graph, (inputs, outputs) in interfaces.items():
        calls[graph] = encoder if graph == graph_sets.ENCODER else decoder(list(inputs), list(outputs))
    return calls


def export_set(model: Any, config: Any, opset: int, folder: Path, interfaces: Mapping[str, tuple[Mapping, Mapping]]) -> dict[str, list[str]]:
    """Write the graphs of ``interfaces`` into ``folder``, then the merged decoder; returns each graph's output names."""
    from hatch_onnx import graph_sets
    from hatch_onnx.frameworks.tensorflow import _signature, require_tensorflow, write_graph

    tf, _ = require_tensorflow()
    model = apply_values_override(model, config)
    calls = _calls(model, interfaces)
    written = {}
    for graph, (inputs, outputs) in interfaces.items():
        dummy = graph_sets.dummy_inputs(config, graph, graph_sets.EXPORT_SHAPES, config.DUMMY_SEED)
        write_graph(model, calls[graph], _signature(tf, inputs, dummy), list(outputs), {**inputs, **outputs}, opset,
                    Path(folder) / graph, external=False)
        written[graph] = list(outputs)
    graph_sets.merge_decoders(Path(folder) / graph_sets.DECODER, Path(folder) / graph_sets.DECODER_WITH_PAST,
                              Path(folder) / graph_sets.DECODER_MERGED)
    written[graph_sets.DECODER_MERGED] = written[graph_sets.DECODER]
    return written


def reference_outputs(model: Any, config: Any, graph: str, inputs: Mapping[str, Any],
                      interfaces: Mapping[str, tuple[Mapping, Mapping]]) -> dict[str, Any]:
    """The TF callable ``graph`` was traced from, run eagerly on ``inputs``: named numpy outputs."""
    from hatch_onnx import graph_sets
    from hatch_onnx.frameworks.tensorflow import require_tensorflow

    tf, _ = require_tensorflow()
    source = graph_sets.DECODER if graph == graph_sets.DECODER_MERGED else graph
    call = _calls(apply_values_override(model, config), {source: interfaces[source]})[source]
    outputs = call(*(tf.constant(value) for value in inputs.values()))
    return {name: value.numpy() for name, value in zip(interfaces[source][1], outputs)}
