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
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from hatch_onnx.errors import ExportError, FrameworkError
from hatch_onnx.onnx.config import OnnxConfig

if TYPE_CHECKING:  # pragma: no cover
    import onnx

INSTALL_HINT = "pip install 'hatch-onnx[tf]'"



def require_tensorflow() -> tuple[Any, Any]:
    """``(tensorflow, tf2onnx)``, or a :class:`FrameworkError` that says how to install them."""
    # tf_model.h5 is a Keras 2 format: transformers' TF classes need tf-keras, not Keras 3.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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

_PAST = re.compile(r"^past_key_values\.(\d+)\.(?:(decoder|encoder)\.)?(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(?:(decoder|encoder)\.)?(key|value)$")
# Where a layer's cache tensors sit in transformers' TF tuple caches. GPT-2 stacks key and
# value into one (2, batch, heads, sequence, head_dim) tensor per layer; the encoder-decoders
# keep (self key, self value, cross key, cross value).
_CACHE_SLOT = {("decoder", "key"): 0, ("decoder", "value"): 1, ("encoder", "key"): 2, ("encoder", "value"): 3}
_STACKED_CACHE = frozenset({"gpt2"})


def prepare_model(model: Any, config: OnnxConfig) -> Any:
    for key, value in (config.values_override or {}).items():
        setattr(model.config, key, value)
    return model


def _cache_from_flat(tf: Any, model: Any, named: Mapping[str, Any]) -> Any:
    layers: dict[int, dict[tuple[str, str], Any]] = {}
    for name, tensor in named.items():
        match = _PAST.match(name)
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
    match = _PRESENT.match(name)
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
        kwargs = {name: value for name, value in named.items() if not _PAST.match(name)}
        cache = _cache_from_flat(tf, model, named)
        if cache is not None:
            kwargs["past_key_values"] = cache
            kwargs["use_cache"] = True
            if model.config.is_encoder_decoder and first_argument not in kwargs:
                # A decoding step, as pytorch.FlatModel: the encoder's output is in the cache.
                kwargs[first_argument] = None  # Keras insists that the first argument be passed
                kwargs["encoder_outputs"] = _encoder_placeholder(tf, model, named)
        out = model(**kwargs, training=False, return_dict=True)
        return tuple(_present(model, out.past_key_values, name) if _PRESENT.match(name) else out[name] for name in output_names)

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


def _signature(tf: Any, config: OnnxConfig, dummy: Mapping[str, Any]) -> list:
    specs = []
    for name, array in dummy.items():
        dynamic = config.inputs[name]
        shape = [None if axis in dynamic else size for axis, size in enumerate(array.shape)]
        specs.append(tf.TensorSpec(shape, tf.as_dtype(array.dtype), name=name))
    return specs


def export_tensorflow(preprocessor: Any, model: Any, config: OnnxConfig, opset: int, output: Path) -> tuple[list[str], list[str]]:
    """Write ``output`` (and ``output.data`` past 2 GiB) from a transformers TF model; returns (inputs, outputs)."""
    tf, tf2onnx = require_tensorflow()
    register_op_handlers()
    output = Path(output)
    prepare_model(model, config)
    dummy = config.generate_dummy_inputs(preprocessor, framework=None)
    input_names, output_names = list(dummy), list(config.outputs)
    signature = _signature(tf, config, dummy)
    external = config.use_external_data_format(num_parameters(model))
    try:
        with _quiet(), _unjitted_grouped_convolutions(model):
            function = _trace(tf, flat_call(model, input_names, output_names), signature)
            proto, storage = _convert(tf2onnx, function, signature, opset, external)
    except Exception as exc:  # tf2onnx and TF tracing raise many types; one error for the caller
        raise ExportError(f"tf2onnx failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    if external:
        _load_external_tensors(proto, storage, output.parent)
    _captures_as_initializers(proto, function, signature, input_names)
    _fold_constant_ifs(proto.graph)
    _standard_ranges(proto, opset)
    name_graph(proto, config, input_names, output_names)
    check_ops_supported(proto)
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
        check_loads(output)
    except BaseException:
        output.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        raise
    return input_names, output_names


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


def _fold_constant_ifs(graph: Any, outer: "Mapping[str, Any] | None" = None) -> None:
    """Replace each ``If`` whose condition only constants lead to by the branch it takes, and
    give each ``Transpose`` by such a computed permutation its ``perm`` (in subgraphs too).

    A Python ``if`` on a tensor that is constant once traced (TF DeBERTa's ``gather_axis !=
    tf.rank(x) - 1``) becomes an ``If`` through autograph, which tf2onnx leaves unfolded
    (``Not(Equal(c, c))``), and the permutation it computes (``tf.roll(tf.range(tf.rank(x)))``)
    a Transpose with a second input, which ONNX does not have: onnxruntime would refuse the
    whole graph, even with that branch never taken.
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    constants = dict(outer or {})
    constants.update((tensor.name, numpy_helper.to_array(tensor)) for tensor in graph.initializer)
    producers: dict[str, Any] = {}
    unknown: set[str] = set()  # names found not to be constant

    def value(name: str, depth: int = 0) -> Any:
        if name in constants:
            return constants[name]
        node = producers.get(name)
        if name in unknown or node is None or depth > 16 or node.domain not in ("", "ai.onnx") or _bodies(node) or node.op_type in _RANDOM_OPS:
            return None
        inputs = [value(i, depth + 1) if i else None for i in node.input]
        if any(v is None for v, i in zip(inputs, node.input) if i):
            unknown.add(name)
            return None
        outputs = ReferenceEvaluator(node).run(None, {i: v for i, v in zip(node.input, inputs) if i})
        constants.update(zip(node.output, outputs))
        return constants[name]

    index = 0
    while index < len(graph.node):
        node = graph.node[index]
        if node.domain in ("", "ai.onnx") and node.op_type == "If" and (condition := value(node.input[0])) is not None:
            taken = "then_branch" if bool(condition.reshape(-1)[0]) else "else_branch"
            body = next(attribute.g for attribute in node.attribute if attribute.name == taken)
            inlined = list(body.node) + [
                helper.make_node("Identity", [inner.name], [out], name=f"{node.name}/{taken}/out_{k}")
                for k, (inner, out) in enumerate(zip(body.output, node.output)) if out
            ]
            graph.initializer.extend(body.initializer)
            constants.update((tensor.name, numpy_helper.to_array(tensor)) for tensor in body.initializer)
            del graph.node[index]
            for offset, inner in enumerate(inlined):
                graph.node.insert(index + offset, inner)
            continue  # the inlined nodes next
        if node.domain in ("", "ai.onnx") and node.op_type == "Transpose" and len(node.input) == 2:
            perm = value(node.input[1])
            if perm is not None:
                del node.input[1]
                node.attribute.append(helper.make_attribute("perm", [int(axis) for axis in perm.reshape(-1)]))
        for body in _bodies(node):
            _fold_constant_ifs(body, constants)
        producers.update((name, node) for name in node.output if name)
        index += 1


def _standard_ranges(proto: Any, opset: int) -> None:
    """tf2onnx converts a ``tf.range`` inside a while loop's body (TF CLIP's and GroupViT's) to
    ``com.microsoft`` Range without importing that domain, and the ONNX checker refuses the
    graph. ONNX has had the same op since opset 11."""
    if opset < 11:
        return
    for node in _all_nodes(proto.graph):
        if node.domain == "com.microsoft" and node.op_type == "Range":
            node.domain = ""


# --- naming ----------------------------------------------------------------------------------


def name_graph(proto: "onnx.ModelProto", config: OnnxConfig, input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """Give the graph the config's names and dynamic axes, and a form that depends on its structure alone.

    tf2onnx names outputs after TF tensors and dynamic dimensions ``unk__N``. Its node names,
    node order and which of two merged duplicate constants survives vary from run to run (even
    in a fresh process with a fixed hash seed), so the same model would give other bytes: the
    nodes are put in a structural topological order and everything inside is named by position.
    """
    graph = proto.graph
    if [i.name for i in graph.input] != list(input_names) or len(graph.output) != len(output_names):
        raise ExportError(
            f"tf2onnx changed the signature: inputs {[i.name for i in graph.input]}, {len(graph.output)} outputs; "
            f"expected inputs {list(input_names)}, outputs {list(output_names)}"
        )
    fixed = {value.name: value.name for value in graph.input}
    fixed.update((value.name, name) for value, name in zip(graph.output, output_names))
    if len(fixed) != len(graph.input) + len(graph.output):  # tf.function adds an Identity per output
        raise ExportError(f"tf2onnx gave two of the inputs and outputs {list(input_names) + list(output_names)} one tensor")
    _canonicalize(graph, {}, fixed, "")
    axes = {**config.inputs, **config.outputs}
    for value in list(graph.input) + list(graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in axes.get(value.name, {}):
                dim.ClearField("dim_value")
                dim.dim_param = axes[value.name][axis]
            elif not dim.HasField("dim_value"):
                # dynamic in the graph but unnamed by the config (a CNN's feature-map size)
                dim.dim_param = f"{value.name}_dim_{axis}"
    # "converted from <TF function name with a process-wide counter>"
    proto.doc_string = graph.doc_string = ""
    graph.name = "main_graph"


def _bodies(node: Any) -> list:
    """The subgraphs of a control-flow node (tf2onnx emits If and Loop)."""
    return [body for attribute in node.attribute for body in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)]


def _outer_references(node: Any) -> set[str]:
    """Names a node's subgraphs read from the enclosing scopes: inputs ONNX does not list."""
    refs: set[str] = set()
    for body in _bodies(node):
        defined = {v.name for v in body.input} | {t.name for t in body.initializer} | {o for n in body.node for o in n.output}
        for inner in body.node:
            refs.update(name for name in list(inner.input) + sorted(_outer_references(inner)) if name and name not in defined)
        refs.update(v.name for v in body.output if v.name not in defined)
    return refs


def _digest(tensor: Any) -> str:
    """A constant's identity: its type, shape and content, not its name."""
    import hashlib

    digest = hashlib.sha1(f"{tensor.data_type}:{list(tensor.dims)}:".encode())
    if tensor.raw_data:
        digest.update(tensor.raw_data)
    else:
        import onnx

        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = ""
        digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _body_signature(node: Any) -> tuple:
    """Enough of a control-flow node's bodies to tell two such nodes apart in the ordering."""
    return tuple(sorted(n.op_type for body in _bodies(node) for n in _all_nodes(body)))


def _node_key(node: Any, ids: Mapping[str, str], outer: set[str]) -> tuple:
    attributes = []
    for attribute in node.attribute:
        if attribute.HasField("g") or len(attribute.graphs):
            attributes.append((attribute.name, repr(_body_signature(node)).encode()))  # bodies are ordered on their own
        elif attribute.HasField("t") or len(attribute.tensors):  # a Constant: content, not name
            attributes.append((attribute.name, ",".join(_digest(t) for t in [attribute.t, *attribute.tensors]).encode()))
        else:
            attributes.append((attribute.name, attribute.SerializeToString(deterministic=True)))
    inputs = tuple(ids.get(name, "?") if name else "" for name in node.input)
    return node.op_type, node.domain, inputs, tuple(sorted(ids.get(name, "?") for name in outer)), tuple(attributes)


# Ops whose two copies on the same inputs may differ: never merged.
_RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"})


def _canonicalize(graph: Any, outer_ids: Mapping[str, str], fixed: Mapping[str, str], prefix: str) -> None:
    """Order ``graph``'s nodes topologically, ties broken by structure, and name them by position.

    A tensor's structural id says where it comes from: the graph's k-th input, a constant's
    content, or output j of a node identified by its op, attributes and input ids. Among the
    nodes ready to be placed, the smallest key goes first, so the order never depends on names;
    two nodes with the same key compute the same thing and are merged (tf2onnx leaves some in
    control-flow bodies), as are constants with the same content. ``fixed`` keeps the graph's
    own input and output names.
    """
    import hashlib
    import heapq

    ids = dict(outer_ids)
    for k, value in enumerate(graph.input):
        ids[value.name] = f"input:{k}"
    for tensor in graph.initializer:
        ids[tensor.name] = "const:" + _digest(tensor)
    nodes = list(graph.node)
    outer = [_outer_references(node) if _bodies(node) else set() for node in nodes]
    produced_by = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    needs = [{produced_by[name] for name in list(node.input) + sorted(refs) if name in produced_by} for node, refs in zip(nodes, outer)]
    users: dict[int, list[int]] = {}
    for i, producers in enumerate(needs):
        for producer in producers:
            users.setdefault(producer, []).append(i)
    waiting = [len(producers) for producers in needs]
    ready = [(_node_key(nodes[i], ids, outer[i]), i) for i in range(len(nodes)) if not waiting[i]]
    heapq.heapify(ready)
    order: list[int] = []
    merged: list[int] = []
    placed: dict[str, int] = {}  # structural digest -> the node kept for it
    aliases: dict[str, str] = {}  # output of a merged duplicate -> the kept node's output
    while ready:
        key, i = heapq.heappop(ready)
        node = nodes[i]
        digest = hashlib.sha1(repr(key).encode()).hexdigest()
        mergeable = not _bodies(node) and node.op_type not in _RANDOM_OPS and not any(name in fixed for name in node.output)
        if digest in placed and mergeable:
            aliases.update(zip(node.output, nodes[placed[digest]].output))
            merged.append(i)
        else:
            placed.setdefault(digest, i)
            order.append(i)
        for j, name in enumerate(node.output):
            ids[name] = f"{digest}:{j}"
        for user in users.get(i, ()):
            waiting[user] -= 1
            if not waiting[user]:
                heapq.heappush(ready, (_node_key(nodes[user], ids, outer[user]), user))
    if len(order) + len(merged) != len(nodes):
        raise ExportError("tf2onnx produced a graph with a cycle")

    renames = {value.name: fixed.get(value.name, f"{prefix}input_{k}") for k, value in enumerate(graph.input)}
    first_use: dict[str, int] = {}
    for position, i in enumerate(order):
        node = nodes[i]
        node.name = f"{prefix}{node.op_type}_{position}"
        for j, name in enumerate(node.output):
            if name:
                renames[name] = fixed.get(name, f"{node.name}:{j}")
        for name in list(node.input) + sorted(outer[i]):
            first_use.setdefault(aliases.get(name, name), position)
    for value in graph.output:
        first_use.setdefault(aliases.get(value.name, value.name), len(order))
    renames.update((name, renames[target]) for name, target in aliases.items())
    # Constants: named in order of first use, one per content; unused ones dropped.
    by_content: dict[str, str] = {}
    for tensor in sorted(graph.initializer, key=lambda t: (first_use.get(t.name, len(order) + 1), ids[t.name], t.name)):
        if tensor.name in first_use:
            renames[tensor.name] = by_content.setdefault(ids[tensor.name], f"{prefix}const_{len(by_content)}")
    kept: set[str] = set()
    for k in reversed(range(len(graph.initializer))):
        name = graph.initializer[k].name
        if name not in first_use or renames[name] in kept:
            del graph.initializer[k]
        else:
            kept.add(renames[name])
    for i in sorted(merged, reverse=True):
        del graph.node[i]
    graph.initializer.sort(key=lambda t: int(renames[t.name].rsplit("_", 1)[1]))
    graph.node.sort(key=lambda node: int(node.name.rsplit("_", 1)[1]))
    _apply_renames(graph, renames)  # names are unique across nested scopes: the bodies' references too
    del graph.value_info[:]  # tf2onnx's intermediate shapes (with unk__N): onnxruntime infers them
    graph.doc_string = ""
    inner_ids = {renames.get(name, name): value for name, value in ids.items()}
    for node in graph.node:
        for attribute in node.attribute:
            for k, body in enumerate(([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)):
                body_prefix = f"{node.name}/{attribute.name}{k or ''}"
                body.name = body_prefix
                _canonicalize(body, inner_ids, {}, body_prefix + "/")


def _apply_renames(graph: Any, renames: Mapping[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
        for body in _bodies(node):
            _apply_renames(body, renames)
    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)


# --- refusing what onnxruntime cannot run ----------------------------------------------------


def _onnxruntime_ops() -> set[tuple[str, str]]:
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    return {(schema.domain, schema.name) for schema in ort_c.get_all_operator_schema()}


def check_ops_supported(proto: "onnx.ModelProto") -> None:
    """Raise naming every op of the graph that onnxruntime has no definition of.

    tf2onnx leaves a TF op it cannot convert in the graph as is (``Erfc`` in domain ""), logs
    it and carries on; such a graph would be written and only fail when loaded.
    """
    known = _onnxruntime_ops()
    unknown = Counter(
        node.op_type for node in _all_nodes(proto.graph) if ("" if node.domain == "ai.onnx" else node.domain, node.op_type) not in known
    )
    if unknown:
        ops = ", ".join(f"{op} (x{count})" if count > 1 else op for op, count in sorted(unknown.items()))
        raise ExportError(f"tf2onnx left TensorFlow ops onnxruntime cannot run: {ops}; no graph was written")


def _all_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for body in _bodies(node):
            yield from _all_nodes(body)


_ORT_MISSING_KERNEL = re.compile(r"implementation for (\w+)\(")


def check_loads(path: Path) -> None:
    """Load the graph in onnxruntime; a kernel it lacks (an op for one dtype) is an export error too."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types
        message = str(exc).splitlines()[0]
        ops = sorted(set(_ORT_MISSING_KERNEL.findall(str(exc))))
        what = f"ops onnxruntime cannot run: {', '.join(ops)}" if ops else "a graph onnxruntime cannot load"
        raise ExportError(f"tf2onnx produced {what} ({message})") from exc


# --- validation and new heads ----------------------------------------------------------------


def run_reference(model: Any, config: OnnxConfig, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The TF model's outputs on ``inputs`` (numpy arrays), named as the config's, as numpy arrays."""
    tf, _ = require_tensorflow()
    call = flat_call(prepare_model(model, config), list(inputs), list(config.outputs))
    outputs = call(*(tf.constant(value) for value in inputs.values()))
    return {name: value.numpy() for name, value in zip(config.outputs, outputs)}


def num_parameters(model: Any) -> int:
    return int(model.count_params())


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
    call = flat_call(prepare_model(model, config), list(inputs), list(config.outputs))
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(watched)
        outputs = [o for o in call(*(tf.constant(value) for value in inputs.values())) if o.dtype.is_floating]
        total = tf.add_n([tf.reduce_sum(o) for o in outputs])
    grads = dict(zip((id(v) for v in watched), tape.gradient(total, watched)))
    return [name for name, variables in candidates.items() if any(grads.get(id(v)) is not None for v in variables)]
