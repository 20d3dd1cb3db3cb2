"""TensorFlow -> ONNX through tf2onnx, with the op conversions tf2onnx lacks on today's stack.

The model is wrapped in a ``tf.function`` whose positional inputs are the config's, each a
``tf.TensorSpec`` with ``None`` on the config's dynamic axes, and which returns the config's
outputs as a flat tuple (caches flattened to ``past_key_values.*`` / ``present.*``, as the
PyTorch path does). tf2onnx converts it; we then give the graph the config's names (inputs,
outputs and dynamic axes instead of ``unk__N``), refuse any graph onnxruntime cannot load
(tf2onnx writes unconverted TF ops into the graph and carries on), and write it.

Which features export from TensorFlow is declared in the registry (``ModelSupport.tensorflow``,
read through :func:`hatch_onnx.models.tf_features`). This module is light at import time:
tensorflow and tf2onnx are imported by the functions that use them.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from hatch_onnx import graph_passes
from hatch_onnx.config import PAST, PRESENT, OnnxConfig, apply_values_override, needs_external_data
from hatch_onnx.errors import ExportError, FrameworkError
from hatch_onnx.frameworks.exporters import EXPORTERS
from hatch_onnx.frameworks.env import isolate

FRAMEWORK = "tf"
EXPORTER_NAMES = EXPORTERS["tf"]
INSTALL_HINT = "pip install 'hatch-onnx[tf]'"


def require_tensorflow() -> tuple[Any, Any]:
    """``(tensorflow, tf2onnx)``, or a :class:`FrameworkError` that says how to install them."""
    isolate("tf")  # tf_model.h5 is a Keras 2 format: transformers' TF classes need tf-keras, not Keras 3
    try:
        import tensorflow as tf
        import tf_keras  # noqa: F401
        import tf2onnx
    except ImportError as exc:
        raise FrameworkError(f"TensorFlow export needs {exc.name or 'tensorflow'}, which is not installed: {INSTALL_HINT}") from exc
    return tf, tf2onnx


# --- op handlers -----------------------------------------------------------------------------
# tf2onnx 1.17 has no conversion for these ops, which TensorFlow >= 2.16 emits; without one it
# leaves the TF op in the graph, which onnxruntime then refuses to load.

_HANDLERS_REGISTERED = False


def _erfc(ctx: Any, node: Any, **kwargs: Any) -> None:
    """Erfc(x) = 1 - Erf(x): tf.nn.gelu (approximate=False) is 0.5 * x * erfc(-x / sqrt(2)).

    1 - Erf loses relative precision only where erfc nears 0, i.e. for GELU inputs far below
    zero, whose output is ~0 either way: the absolute error stays at float32 resolution.
    """
    import numpy as np
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}/one"), np.array(1, dtype=dtype))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name, name="erf")
    shapes, dtypes = node.output_shapes, node.output_dtypes
    ctx.remove_node(node.name)
    ctx.make_node("Sub", [one.output[0], erf.output[0]], outputs=node.output, name=node.name, shapes=shapes, dtypes=dtypes)


def _xla_dynamic_slice(ctx: Any, node: Any, **kwargs: Any) -> None:
    """XlaDynamicSlice(x, starts, sizes) -> Slice(x, s, s + sizes), s = clamp(starts, 0, shape - sizes).

    TF T5 slices its position bias this way when given a cache. XLA clamps the start indices so
    that the slice stays in bounds; ONNX Slice would clamp the ends instead, so clamp first.
    """
    import numpy as np
    from onnx import TensorProto
    from tf2onnx import utils

    data, starts, sizes = node.input
    scope = node.name
    starts = ctx.make_node("Cast", [starts], attr={"to": TensorProto.INT64}, op_name_scope=scope, name="starts").output[0]
    sizes = ctx.make_node("Cast", [sizes], attr={"to": TensorProto.INT64}, op_name_scope=scope, name="sizes").output[0]
    shape = ctx.make_node("Shape", [data], op_name_scope=scope, name="shape").output[0]
    limit = ctx.make_node("Sub", [shape, sizes], op_name_scope=scope, name="limit").output[0]
    zero = ctx.make_const(utils.make_name(f"{scope}/zero"), np.array(0, dtype=np.int64)).output[0]
    upper = ctx.make_node("Min", [starts, limit], op_name_scope=scope, name="upper").output[0]
    begin = ctx.make_node("Max", [upper, zero], op_name_scope=scope, name="begin").output[0]
    end = ctx.make_node("Add", [begin, sizes], op_name_scope=scope, name="end").output[0]
    shapes, dtypes = node.output_shapes, node.output_dtypes
    ctx.remove_node(node.name)
    ctx.make_node("Slice", [data, begin, end], outputs=node.output, name=node.name, shapes=shapes, dtypes=dtypes)


# TF op -> (minimum ONNX opset of the handler, handler). Erf is ONNX since opset 9, Slice with
# tensor inputs since 10.
OP_HANDLERS: Mapping[str, tuple[int, Callable[..., None]]] = {
    "Erfc": (9, _erfc),
    "XlaDynamicSlice": (10, _xla_dynamic_slice),
}


def _fix_reshape_merge() -> None:
    """tf2onnx's back-to-back optimizer merges Reshape(Reshape(x, a), b) into Reshape(x, b) even
    when ``b`` holds a 0, which in ONNX means "copy that dimension of the input": the input
    changes, so does the shape. TF multiple-choice heads (flatten choices, then reshape the
    mask to (0, 1, 1, -1)) come out with a wrong mask. Keep such pairs apart."""
    from tf2onnx.optimizer import back_to_back_optimizer

    table = back_to_back_optimizer._func_map
    merge = table.get(("Reshape",))
    if merge is None or getattr(merge, "_hatch_onnx", False):
        return

    def merge_unless_copying(g: Any, node: Any, consumer_nodes: list) -> list:
        if len(consumer_nodes) == 1 and consumer_nodes[0].type == "Reshape":
            shape = consumer_nodes[0].inputs[1]
            if shape is None or not shape.is_const() or 0 in shape.get_tensor_value(as_list=False).ravel():
                return []
        return merge(g, node, consumer_nodes)

    merge_unless_copying._hatch_onnx = True
    table[("Reshape",)] = merge_unless_copying


def register_op_handlers() -> None:
    """Add :data:`OP_HANDLERS` to tf2onnx's registry (once per process, and only if it lacks them)."""
    global _HANDLERS_REGISTERED
    if _HANDLERS_REGISTERED:
        return
    from tf2onnx.handler import tf_op

    known = {name for opset in tf_op.get_opsets().get("", []) for name in opset}
    for op, (version, handler) in OP_HANDLERS.items():
        if op not in known:  # a future tf2onnx's own conversion wins
            tf_op.register_handler(handler, version, [op], "", {})
    _fix_reshape_merge()
    _HANDLERS_REGISTERED = True


# --- the model as a flat function ------------------------------------------------------------

# Where a layer's cache tensors sit in transformers' TF tuple caches. GPT-2 stacks key and
# value into one (2, batch, heads, sequence, head_dim) tensor per layer; the encoder-decoders
# keep (self key, self value, cross key, cross value).
_CACHE_SLOT = {("decoder", "key"): 0, ("decoder", "value"): 1, ("encoder", "key"): 2, ("encoder", "value"): 3}
_STACKED_CACHE = frozenset({"gpt2"})


def _cache_from_flat(tf: Any, model: Any, named: Mapping[str, Any]) -> Any:
    layers: dict[int, dict[tuple[str, str], Any]] = {}
    for name, tensor in named.items():
        match = PAST.match(name)
        if match:
            layers.setdefault(int(match.group(1)), {})[(match.group(2) or "decoder", match.group(3))] = tensor
    if not layers:
        return None
    if model.config.model_type in _STACKED_CACHE:
        return tuple(tf.stack([layers[i][("decoder", "key")], layers[i][("decoder", "value")]]) for i in sorted(layers))
    return tuple(
        tuple(layers[i][slot] for slot in sorted(layers[i], key=_CACHE_SLOT.__getitem__)) for i in sorted(layers)
    )


def _present(model: Any, cache: Any, name: str) -> Any:
    match = PRESENT.match(name)
    index, part, kind = int(match.group(1)), match.group(2) or "decoder", match.group(3)
    if model.config.model_type in _STACKED_CACHE:
        return cache[index][0 if kind == "key" else 1]
    return cache[index][_CACHE_SLOT[(part, kind)]]


def _encoder_placeholder(tf: Any, model: Any, named: Mapping[str, Any]) -> Any:
    """NaN encoder states shaped as the cross-attention cache says (see pytorch._encoder_placeholder)."""
    from transformers.modeling_tf_outputs import TFBaseModelOutput

    shape = tf.shape(named["past_key_values.0.encoder.key"])  # (batch, heads, encoder_sequence, head_dim)
    hidden = getattr(model.config, "d_model", None) or model.config.hidden_size
    return TFBaseModelOutput(last_hidden_state=tf.fill(tf.stack([shape[0], shape[2], int(hidden)]), float("nan")))


def flat_call(model: Any, input_names: Sequence[str], output_names: Sequence[str]) -> Callable[..., tuple]:
    """``call(*inputs) -> tuple(outputs)``, in the config's order: the TF counterpart of pytorch.FlatModel.

    Flat ``past_key_values.*`` inputs become transformers' TF tuple cache, and the cache it
    returns becomes flat ``present.*`` outputs.
    """
    import tensorflow as tf

    input_names, output_names = list(input_names), list(output_names)
    first_argument = next(iter(inspect.signature(model.call).parameters))

    def call(*tensors: Any) -> tuple:
        named = dict(zip(input_names, tensors))
        kwargs = {name: value for name, value in named.items() if not PAST.match(name)}
        cache = _cache_from_flat(tf, model, named)
        if cache is not None:
            kwargs["past_key_values"] = cache
            kwargs["use_cache"] = True
            if model.config.is_encoder_decoder and first_argument not in kwargs:
                # A decoding step, as pytorch.FlatModel: the encoder's output is in the cache.
                kwargs[first_argument] = None  # Keras insists that the first argument be passed
                kwargs["encoder_outputs"] = _encoder_placeholder(tf, model, named)
        out = model(**kwargs, training=False, return_dict=True)
        return tuple(_present(model, out.past_key_values, name) if PRESENT.match(name) else out[name] for name in output_names)

    return call


# --- export ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """tf2onnx logs every step at INFO/WARNING; unconverted ops are reported by our own check."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR + 10)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _signature(tf: Any, axes: Mapping[str, Mapping[int, str]], dummy: Mapping[str, Any]) -> list:
    """One ``tf.TensorSpec`` per input of ``dummy``: its dtype, ``None`` on the axes ``axes`` names dynamic."""
    specs = []
    for name, array in dummy.items():
        dynamic = axes[name]
        shape = [None if axis in dynamic else size for axis, size in enumerate(array.shape)]
        specs.append(tf.TensorSpec(shape, tf.as_dtype(array.dtype), name=name))
    return specs


def is_model(model: Any) -> bool:
    return hasattr(model, "count_params") and hasattr(model, "config")


def to_model_precision(inputs: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """TensorFlow models are exported in float32 only: inputs as they are."""
    return dict(inputs)


def export(preprocessor: Any, model: Any, config: OnnxConfig, opset: int, output: Path,
           exporter: Optional[str] = None) -> tuple[list[str], list[str]]:
    """Write ``output`` (and ``output.data`` past :func:`needs_external_data`) from a transformers TF model.

    Returns the graph's (inputs, outputs). ``exporter`` is always tf2onnx.
    """
    if exporter not in (None, *EXPORTER_NAMES):
        raise ExportError(f"exporter {exporter!r} does not export TensorFlow models; TensorFlow exports use tf2onnx")
    tf, _ = require_tensorflow()
    apply_values_override(model, config)
    dummy = config.generate_dummy_inputs(preprocessor, framework=None)
    input_names, output_names = list(dummy), list(config.outputs)
    write_graph(model, flat_call(model, input_names, output_names), _signature(tf, config.inputs, dummy), output_names,
                {**config.inputs, **config.outputs}, opset, Path(output), needs_external_data(weight_bytes(model)))
    return input_names, output_names


def write_graph(model: Any, call: Callable[..., tuple], signature: list, output_names: Sequence[str],
                axes: Mapping[str, Mapping[int, str]], opset: int, output: Path, external: bool) -> None:
    """Trace ``call`` at ``signature``, convert it with tf2onnx, name it (inputs as the signature's
    specs, outputs ``output_names``, dynamic axes ``axes``), refuse what onnxruntime cannot load,
    and write ``output`` (and ``output.data`` when ``external``). Nothing is left behind on failure."""
    tf, tf2onnx = require_tensorflow()
    register_op_handlers()
    input_names = [spec.name for spec in signature]
    try:
        with _quiet(), _unjitted_grouped_convolutions(model):
            function = _trace(tf, call, signature)
            proto, storage = _convert(tf2onnx, function, signature, opset, external)
    except Exception as exc:  # tf2onnx and TF tracing raise many types; one error for the caller
        raise ExportError(f"tf2onnx failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    if external:
        _load_external_tensors(proto, storage, output.parent)
    _captures_as_initializers(proto, function, signature, input_names)
    graph_passes.fold_constant_ifs(proto.graph)
    graph_passes.standard_ranges(proto, opset)
    graph_passes.name_graph(proto, axes, input_names, output_names)
    graph_passes.check_ops_supported(proto)
    data = output.with_name(output.name + ".data")
    try:
        import onnx

        if external:  # the weights in one <name>.data beside the graph, as the PyTorch path does
            data.unlink(missing_ok=True)
            # Small constants stay inline: onnxruntime's shape inference reads them (Slice starts).
            onnx.save_model(
                proto, str(output), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024
            )
        else:
            onnx.save_model(proto, str(output))
        graph_passes.check_loads(output)
    except BaseException:
        output.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        raise


def _trace(tf: Any, call: Callable[..., tuple], signature: list) -> Any:
    """A traced ``tf.function`` of ``call``, without autograph when the model allows it.

    Most transformers TF models trace as plain graphs, and converting their source with
    autograph costs about a second per export; some (BART's and Whisper's decoders, DeBERTa-v2's
    attention) branch on tensors in Python and need it.
    """
    try:
        function = tf.function(call, input_signature=signature, autograph=False)
        function.get_concrete_function(*signature)  # traced once; from_function reuses it
    except tf.errors.OperatorNotAllowedInGraphError:
        function = tf.function(call, input_signature=signature, autograph=True)
    return function


@contextlib.contextmanager
def _unjitted_grouped_convolutions(model: Any) -> Iterator[None]:
    """Keras runs grouped convolutions (ConvNeXt's depthwise ones) through a nested
    ``tf.function(jit_compile=True)``, which TF will not inline and tf2onnx then leaves as a
    ``PartitionedCall``. The plain convolution op is the same computation."""
    patched = []
    for layer in model.submodules:
        if getattr(layer, "groups", 1) > 1 and hasattr(layer, "_jit_compiled_convolution_op") and hasattr(layer, "convolution_op"):
            layer._jit_compiled_convolution_op = layer.convolution_op  # shadows the class's tf.function
            patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer._jit_compiled_convolution_op


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _convert(tf2onnx: Any, function: Any, signature: list, opset: int, large_model: bool) -> tuple[Any, Any]:
    """tf2onnx's conversion, fast first: by default it deep-copies the graph before each of its
    optimizer passes so that a failing pass can be skipped (60% of the time on a small model).
    Only if a pass fails do we convert again that careful way."""
    from tf2onnx import utils
    from tf2onnx.constants import ENV_TF2ONNX_CATCH_ERRORS

    kwargs = dict(input_signature=signature, opset=opset, large_model=large_model)
    numpy_alias = _numpy_product() if large_model else contextlib.nullcontext()
    # tf2onnx names the nodes it makes <op>__N from a process-wide counter and breaks ties by
    # name in places: the same model exported after another would get other names, another
    # node order, other bytes. Every conversion starts the count afresh.
    utils.INTERNAL_NAME = 1
    with numpy_alias:
        try:
            with _env(ENV_TF2ONNX_CATCH_ERRORS, "FALSE"):
                return tf2onnx.convert.from_function(function, **kwargs)
        except Exception:
            utils.INTERNAL_NAME = 1
            with _env(ENV_TF2ONNX_CATCH_ERRORS, "TRUE"):
                return tf2onnx.convert.from_function(function, **kwargs)


@contextlib.contextmanager
def _numpy_product() -> Iterator[None]:
    """tf2onnx 1.17's large-model path calls ``np.product``, which NumPy 2 removed; lend it ``np.prod``."""
    import numpy as np

    if hasattr(np, "product"):
        yield
        return
    np.product = np.prod
    try:
        yield
    finally:
        del np.product


def _load_external_tensors(proto: Any, storage: Any, scratch_parent: Path) -> None:
    """Bring the tensors tf2onnx's large-model path keeps apart back into ``proto`` (in memory,
    where protobuf's 2 GiB limit does not apply), so that naming sees their content."""
    from onnx.external_data_helper import load_external_data_for_model

    with tempfile.TemporaryDirectory(prefix=".hatch-onnx-", dir=scratch_parent) as scratch:
        for location, data in storage.name_to_tensor_data.items():
            (Path(scratch) / location).write_bytes(data)
        load_external_data_for_model(proto, scratch)


# --- graph fixes -----------------------------------------------------------------------------


def _captures_as_initializers(proto: Any, function: Any, signature: list, input_names: Sequence[str]) -> None:
    """Constant tensors the function captured become initializers, not graph inputs.

    tf2onnx freezes captured variables but lists any other captured tensor (a table a layer
    computes when built, as TF GPT-J's sinusoidal positions and causal mask) as a graph input.
    """
    extra = [value.name for value in proto.graph.input if value.name not in input_names]
    if not extra:
        return
    import tensorflow as tf
    from onnx import numpy_helper

    concrete = function.get_concrete_function(*signature)
    captured = {internal.name: external for external, internal in concrete.graph.captures if internal.dtype != tf.resource}
    for name in extra:
        if name not in captured or not hasattr(captured[name], "numpy"):
            continue  # left as an input: name_graph reports the changed signature
        proto.graph.initializer.append(numpy_helper.from_array(captured[name].numpy(), name))
        index = next(k for k, value in enumerate(proto.graph.input) if value.name == name)
        del proto.graph.input[index]


# --- validation and new heads ----------------------------------------------------------------


def run_reference(model: Any, config: OnnxConfig, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The TF model's outputs on ``inputs`` (numpy arrays), named as the config's, as numpy arrays."""
    tf, _ = require_tensorflow()
    call = flat_call(apply_values_override(model, config), list(inputs), list(config.outputs))
    outputs = call(*(tf.constant(value) for value in inputs.values()))
    return {name: value.numpy() for name, value in zip(config.outputs, outputs)}


def sequence_reference(model: Any, config: OnnxConfig, inputs: Mapping[str, Any], output: str) -> Any:
    """The TF model's ``output`` at every position of named ``inputs`` in one pass without a cache (see pytorch.sequence_reference)."""
    import numpy as np

    tf, _ = require_tensorflow()
    model = apply_values_override(model, config)
    tensors = {name: tf.constant(np.asarray(value)) for name, value in inputs.items()}
    return np.asarray(getattr(model(**tensors, use_cache=False, return_dict=True, training=False), output), dtype=np.float32)


def weight_bytes(model: Any) -> int:
    """The bytes of the model's weights, as the graph would store them."""
    return sum(int(weight.shape.num_elements()) * weight.dtype.size for weight in model.weights)


def weights_reaching_outputs(model: Any, config: OnnxConfig, inputs: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """Which of the missing weights ``names`` influence the exported outputs (by one gradient).

    transformers' TF loader reports a missing weight by its name without the model prefix
    (``bert/pooler/dense/kernel:0``) or a whole missing top-level layer by its name
    (``classifier``). A weight the graph never uses (BERT's pooler under ``default``) is no new head.
    """
    tf, _ = require_tensorflow()
    by_key = {variable.name.split("/", 1)[-1]: variable for variable in model.weights}
    candidates = {
        name: [v for key, v in by_key.items() if key == name or key.startswith(name + "/")] for name in names
    }
    watched = [v for variables in candidates.values() for v in variables if v.dtype.is_floating]
    if not watched:
        return []
    call = flat_call(apply_values_override(model, config), list(inputs), list(config.outputs))
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(watched)
        outputs = [o for o in call(*(tf.constant(value) for value in inputs.values())) if o.dtype.is_floating]
        total = tf.add_n([tf.reduce_sum(o) for o in outputs])
    grads = dict(zip((id(v) for v in watched), tape.gradient(total, watched)))
    return [name for name, variables in candidates.items() if any(grads.get(id(v)) is not None for v in variables)]


# --- an encoder-decoder's graph set (hatch_onnx.graph_sets: names, interfaces, merge, validation) ---
#
# graph_sets says which graphs (their inputs, outputs and dynamic axes, and export inputs); this
# back-end traces each from the TF model, as a flat callable in the interface's order:
#   encoder_model.onnx: model.get_encoder() on the kind's encoder inputs (input_ids, attention_mask;
#     Whisper's input_features);
#   decoder_model.onnx: the model with encoder_outputs given (the encoder does not run), the TF
#     tuple cache it returns flattened to present.*; encoder_attention_mask where the kind has one;
#   decoder_with_past_model.onnx: the flat past as its tuple cache, NaN encoder states of the cross
#     cache's length (never read: the cross cache replaces them, as in the one-step export).
# A decoder's first output is ``logits`` (seq2seq-lm-with-past, speech2seq-lm-with-past) or
# ``last_hidden_state`` (default-with-past, whose model has no LM head). The merged decoder is graph_sets' to make.

SET_HEADS = ("logits", "last_hidden_state")


def _set_call(model: Any, graph: str, input_names: Sequence[str], output_names: Sequence[str]) -> Callable[..., tuple]:
    """The flat TF callable member ``graph`` of the set is traced from."""
    import tensorflow as tf
    from transformers.modeling_tf_outputs import TFBaseModelOutput

    from hatch_onnx.layouts import GRAPH_SET

    input_names, output_names = list(input_names), list(output_names)
    if graph == GRAPH_SET[0]:  # the encoder, on its inputs by name
        def encoder(*tensors: Any) -> tuple:
            named = dict(zip(input_names, tensors))
            return (model.get_encoder()(**named, return_dict=True, training=False).last_hidden_state,)

        return encoder
    if output_names[0] not in SET_HEADS:
        raise ExportError(f"{graph}: a decoder's first output is one of {', '.join(SET_HEADS)}, not {output_names[0]!r}")
    first_argument = next(iter(inspect.signature(model.call).parameters))

    def decoder(*tensors: Any) -> tuple:
        named = dict(zip(input_names, tensors))
        kwargs: dict[str, Any] = {"decoder_input_ids": named["input_ids"], "use_cache": True, "return_dict": True, "training": False}
        if "encoder_attention_mask" in named:  # Whisper's encoder takes no padding mask
            kwargs["attention_mask"] = named["encoder_attention_mask"]
        cache = _cache_from_flat(tf, model, named)
        if cache is None:
            kwargs["encoder_outputs"] = TFBaseModelOutput(last_hidden_state=named["encoder_hidden_states"])
        else:
            kwargs["past_key_values"] = cache
            kwargs["encoder_outputs"] = _encoder_placeholder(tf, model, named)
        kwargs.setdefault(first_argument, None)  # Keras insists that the first argument be passed
        out = model(**kwargs)
        return (out[output_names[0]], *(_present(model, out.past_key_values, name) for name in output_names[1:]))

    return decoder


def export_graph_set(model: Any, config: OnnxConfig, opset: int, folder: Path,
                     interfaces: Mapping[str, tuple[Mapping[str, Mapping[int, str]], Mapping[str, Mapping[int, str]]]],
                     dummies: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Write each member of ``interfaces`` (graph -> (inputs, outputs) with their axes) into ``folder``, traced at
    ``dummies[graph]`` (numpy); returns each graph's output names. Inline weights, as the PyTorch set's."""
    tf, _ = require_tensorflow()
    model = apply_values_override(model, config)
    written = {}
    for graph, (inputs, outputs) in interfaces.items():
        call = _set_call(model, graph, list(inputs), list(outputs))
        write_graph(model, call, _signature(tf, inputs, dummies[graph]), list(outputs), {**inputs, **outputs}, opset,
                    Path(folder) / graph, external=False)
        written[graph] = list(outputs)
    return written


def graph_set_reference(model: Any, config: OnnxConfig, graph: str, inputs: Mapping[str, Any],
                        output_names: Sequence[str]) -> dict[str, Any]:
    """The TF callable member ``graph`` was traced from, run eagerly on ``inputs``: named numpy outputs."""
    tf, _ = require_tensorflow()
    call = _set_call(apply_values_override(model, config), graph, list(inputs), list(output_names))
    return {name: value.numpy() for name, value in zip(output_names, call(*(tf.constant(value) for value in inputs.values())))}
