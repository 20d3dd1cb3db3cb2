"""PyTorch -> ONNX through ``torch.onnx``, with the exporter always named.

The model is wrapped in :class:`FlatModel`, whose ``forward`` takes the config's inputs
positionally and returns the config's outputs as a flat tuple. That one adapter gives the
exporter exactly the graph signature the config describes (no keyword binding surprises),
turns flat ``past_key_values.*`` tensors into transformers' cache objects and back, and is
reused by validation to run the reference model.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch

from hatch_onnx.config import PAST, PRESENT, OnnxConfig, PatchingSpec, apply_values_override, check_input_names, needs_external_data
from hatch_onnx.errors import ExportError
from hatch_onnx.frameworks.exporters import TORCH_ONNX

FRAMEWORK = "pt"
EXPORTER_NAMES = TORCH_ONNX  # torch.onnx's; ``genai`` runs onnxruntime-genai's builder (hatch_onnx.genai_builder)


def _cache_from_flat(flat: Mapping[str, torch.Tensor]) -> Any:
    """Flat ``past_key_values.{i}[.decoder|.encoder].{key|value}`` tensors -> a transformers cache."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    layers: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for name, tensor in flat.items():
        match = PAST.match(name)
        if match:
            index, part, kind = int(match.group(1)), match.group(2) or "decoder", match.group(3)
            layers.setdefault((part, index), {})[kind] = tensor
    if not layers:
        return None
    self_cache, cross_cache = DynamicCache(), DynamicCache()
    for (part, index), kv in sorted(layers.items(), key=lambda item: (item[0][1], item[0][0])):
        (cross_cache if part == "encoder" else self_cache).update(kv["key"], kv["value"], index)
    if any(part == "encoder" for part, _ in layers):
        return EncoderDecoderCache(self_cache, cross_cache)
    return self_cache


def _layer_tensors(cache: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return cache.layers[index].keys, cache.layers[index].values
    return cache.key_cache[index], cache.value_cache[index]  # pragma: no cover - older transformers


def _present(cache: Any, name: str) -> torch.Tensor:
    match = PRESENT.match(name)
    index, part, kind = int(match.group(1)), match.group(2), match.group(3)
    if isinstance(cache, (tuple, list)):  # a legacy tuple cache
        layer = cache[index]
        pair = layer[2:4] if part == "encoder" else layer[:2]
    else:
        if part is not None or hasattr(cache, "self_attention_cache"):
            cache = cache.cross_attention_cache if part == "encoder" else cache.self_attention_cache
        pair = _layer_tensors(cache, index)
    return pair[0] if kind == "key" else pair[1]


# What an encoder reads; a decoder-with-past graph takes none of them (see FlatModel.forward).
_ENCODER_INPUTS = frozenset({"input_ids", "input_features", "pixel_values", "inputs_embeds"})


def _cache_argument(model: torch.nn.Module) -> str:
    """The keyword a model takes its cache by: ``cache`` since transformers 5.24, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(out: Any) -> Any:
    value = out.get("cache")  # transformers >= 5.24 names the field ``cache``
    return value if value is not None else out.past_key_values


def _encoder_placeholder(model: torch.nn.Module, cache: Any) -> Any:
    """Stand-in encoder output for a decoder step whose cross-attention comes from the cache.

    The decoder only reads its shape (transformers 5 builds the cross-attention mask from it);
    passing it keeps the encoder out of the traced graph, as on 4.57. It is NaN so that a model
    which did read its values would fail validation instead of silently agreeing with itself.
    """
    from transformers.modeling_outputs import BaseModelOutput

    key = _layer_tensors(cache.cross_attention_cache, 0)[0]  # (batch, heads, encoder_sequence, head_dim)
    config = model.config
    hidden = getattr(config, "d_model", None) or config.hidden_size
    placeholder = key.new_full((key.shape[0], key.shape[2], int(hidden)), float("nan"))
    return BaseModelOutput(last_hidden_state=placeholder)


class FlatModel(torch.nn.Module):
    """``forward(*inputs) -> tuple(outputs)`` in the config's order and names."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.cache_argument = _cache_argument(model)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, tensors))
        kwargs: dict[str, Any] = {name: value for name, value in named.items() if not PAST.match(name)}
        cache = _cache_from_flat(named)
        if cache is not None:
            kwargs[self.cache_argument] = cache
            kwargs["use_cache"] = True
            if hasattr(cache, "cross_attention_cache") and not _ENCODER_INPUTS & kwargs.keys():
                kwargs["encoder_outputs"] = _encoder_placeholder(self.model, cache)
        out = self.model(**kwargs, return_dict=True)
        results = []
        for name in self.output_names:
            if PRESENT.match(name):
                results.append(_present(_returned_cache(out), name))
            else:
                results.append(out[name])
        return tuple(results)


def _broadcast_bhqkv(mask_function, bh_indices: bool = True):
    """Stand-in for transformers' ``_vmap_for_bhqkv``: the same mask by broadcasting.

    transformers >= 4.53 builds attention masks with ``torch.vmap``, which the TorchScript
    tracer cannot follow (``RuntimeError: unordered_map::at``). Mask functions are element-wise
    on index tensors, so broadcasting the indices against each other gives the same result.
    """

    def build(batch_idx, head_idx, q_idx, kv_idx):
        if not bh_indices:
            return mask_function(None, None, q_idx[:, None], kv_idx[None, :])
        mask = mask_function(batch_idx[:, None, None, None], head_idx[None, :, None, None], q_idx[None, None, :, None], kv_idx[None, None, None, :])
        return mask.expand(batch_idx.shape[0], head_idx.shape[0], q_idx.shape[0], kv_idx.shape[0])

    return build


def _packed_sequence_indices(position_ids: torch.Tensor) -> torch.Tensor:
    """transformers' ``find_packed_sequence_indices`` without ``torch.diff`` (no ONNX symbolic)."""
    previous = torch.cat([position_ids[:, :1] - 1, position_ids[:, :-1]], dim=-1)
    return ((position_ids - previous) != 1).to(torch.int64).cumsum(-1)


def transformers_patches() -> list[PatchingSpec]:
    """Patches every PyTorch export needs on today's transformers (none where they don't apply)."""
    try:
        from transformers import masking_utils
    except ImportError:  # transformers < 4.53: masks are built without vmap
        return []
    specs = []
    if hasattr(masking_utils, "_vmap_for_bhqkv"):
        specs.append(PatchingSpec(masking_utils, "_vmap_for_bhqkv", _broadcast_bhqkv))
    # Its getitem -> index rewrite is a torch function mode that exists for vmap's sake; the
    # tracer fails inside it. Plain indexing is what broadcasting needs.
    if hasattr(masking_utils, "TransformGetItemToIndex"):
        specs.append(PatchingSpec(masking_utils, "TransformGetItemToIndex", contextlib.nullcontext))
    if hasattr(masking_utils, "find_packed_sequence_indices"):
        specs.append(PatchingSpec(masking_utils, "find_packed_sequence_indices", _packed_sequence_indices))
    return specs


_SMALL_CONSTANT = 1024  # elements: larger floating tensors are weights, never shapes


def _shape_inference_without_weight_values(shape_inference):
    """torch's ONNX shape inference, given only the small constants of the model.

    ``_jit_pass_onnx_graph_shape_type_inference`` receives every weight's value and serialises
    the ones it meets into ONNX tensors: for Qwen2.5-0.5B, 2.5 GiB more than the model at the peak
    of an export (measured). Shapes never depend on a float weight's values, only on its type,
    which the traced graph carries; small constants (integer buffers, scalars) may feed shapes
    and are kept. The graph written is byte for byte the same (tests/test_convert.py).
    """

    def infer(graph, params_dict, opset):
        kept = {name: value for name, value in params_dict.items()
                if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > _SMALL_CONSTANT)}
        return shape_inference(graph, kept, opset)

    return infer


def torch_patches() -> list[PatchingSpec]:
    """Patches of torch's TorchScript exporter for the duration of an export."""
    return [PatchingSpec(torch._C, "_jit_pass_onnx_graph_shape_type_inference",
                         _shape_inference_without_weight_values(torch._C._jit_pass_onnx_graph_shape_type_inference))]


@contextlib.contextmanager
def patched(config: OnnxConfig, extra: Sequence[PatchingSpec] = ()) -> Iterator[None]:
    originals = [(spec.o, spec.name, getattr(spec.o, spec.name)) for spec in extra]
    for spec in extra:
        setattr(spec.o, spec.name, spec.custom_op)
    config.patch_ops()
    try:
        yield
    finally:
        config.restore_ops()
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def prepare_model(model: torch.nn.Module, config: OnnxConfig) -> torch.nn.Module:
    """The model in inference mode with the config's overrides set."""
    model.eval()
    return apply_values_override(model, config)


def is_model(model: Any) -> bool:
    return isinstance(model, torch.nn.Module)


def export(preprocessor: Any, model: torch.nn.Module, config: OnnxConfig, opset: int, output: Path,
           exporter: Optional[str] = None) -> tuple[list[str], list[str]]:
    """Dummy inputs from the config (in the model's precision), then :func:`export_pytorch`."""
    dummy = to_model_precision(config.generate_dummy_inputs(preprocessor, framework="pt"), model)
    check_input_names(config, list(dummy), "the dummy inputs")
    return export_pytorch(model, config, opset, output, dummy, exporter=exporter or "torchscript")


def _dynamic_shapes(config: OnnxConfig, inputs: Mapping[str, torch.Tensor]) -> tuple:
    dims: dict[str, Any] = {}
    specs = []
    for name in inputs:
        axes = config.inputs[name]
        spec = {}
        for axis, axis_name in axes.items():
            key = re.sub(r"\W+", "_", axis_name)
            dims.setdefault(key, torch.export.Dim(key))
            spec[axis] = dims[key]
        specs.append(spec or None)
    return (tuple(specs),)


def export_pytorch(
    model: torch.nn.Module,
    config: OnnxConfig,
    opset: int,
    output: Path,
    dummy_inputs: Mapping[str, torch.Tensor],
    exporter: str = "torchscript",
    external_data: Optional[bool] = None,
) -> tuple[list[str], list[str]]:
    """Write ``output`` (and ``output.data`` when external) from ``model``; returns (inputs, outputs).

    ``external_data``: None decides by the bytes of weights written (:func:`needs_external_data`).
    """
    if exporter not in EXPORTER_NAMES:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTER_NAMES)}")
    if exporter == "dynamo":
        from importlib.util import find_spec

        if find_spec("onnxscript") is None:
            raise ExportError("--exporter dynamo needs onnxscript: pip install 'hatch-onnx[torch]'")
    input_names = list(dummy_inputs)
    output_names = list(config.outputs)
    flat = FlatModel(prepare_model(model, config), input_names, output_names)
    args = tuple(dummy_inputs.values())
    dynamic_axes = {name: dict(axes) for name, axes in {**config.inputs, **config.outputs}.items() if name in input_names + output_names}
    with patched(config, [*transformers_patches(), *torch_patches()] if exporter == "torchscript" else ()), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-level shape computation it records as a constant;
        # validation at other shapes is what tells whether one mattered.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # transformers 5's masks index with tensors; the symbolic's caveat about negative indices
        # is checked where it matters, by validation.
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        try:
            if exporter == "torchscript":
                _export_torchscript(flat, args, output, input_names, output_names, dynamic_axes, opset, external_data)
            else:
                if external_data is None:
                    external_data = needs_external_data(weight_bytes(model))
                program = torch.onnx.export(
                    flat, args, input_names=input_names, output_names=output_names,
                    dynamic_shapes=_dynamic_shapes(config, dummy_inputs), opset_version=opset, dynamo=True,
                    external_data=external_data, optimize=True, verify=False,
                )
                program.save(str(output), external_data=external_data)
        except ExportError:
            raise
        except Exception as exc:  # the exporters raise many types; one error for the caller
            raise ExportError(f"torch.onnx ({exporter}) failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    return input_names, output_names


# torch type -> ONNX TensorProto data type, for the weights we write ourselves.
_ONNX_DTYPES = {
    torch.float32: 1, torch.uint8: 2, torch.int8: 3, torch.int16: 5, torch.int32: 6, torch.int64: 7,
    torch.bool: 9, torch.float16: 10, torch.float64: 11, torch.bfloat16: 16,
}


def _export_torchscript(flat, args, output: Path, input_names, output_names, dynamic_axes, opset: int, external_data: Optional[bool]) -> None:
    """TorchScript export of the graph alone, then the weights written once, by us.

    Where the time goes: with ``export_params=True`` torch serialises every weight inside its C++
    exporter and parses the whole model back in Python (to insert onnxscript functions) before
    writing it: for BERT-base, 8 of the 11 seconds of an export. Exporting the graph without
    weights and attaching them here costs one copy per tensor. Weights of ``nn.Linear`` reach
    MatMul through a Transpose; torch's constant folding would pre-transpose them, and so does
    :func:`_fold_weight_transposes`, so the shipped graph has the same shape as a folded export.
    """
    import io

    import onnx

    buffer = io.BytesIO()
    torch.onnx.export(
        flat, args, buffer, input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
        opset_version=opset, export_params=False, do_constant_folding=False, dynamo=False,
    )
    model = onnx.load_model_from_string(buffer.getvalue())
    _size_undeclared_axes(model, dynamic_axes)
    weights = dict(flat.named_parameters(remove_duplicate=False))
    weights.update(flat.named_buffers(remove_duplicate=False))
    graph = model.graph
    wanted = [value.name for value in graph.input if value.name not in input_names]
    missing = [name for name in wanted if name not in weights]
    if missing:
        raise ExportError(f"the exported graph takes tensors the model does not have: {', '.join(missing[:5])}")
    tensors = {name: weights[name].detach() for name in wanted}
    _fold_weight_transposes(graph, tensors)
    kept = [value for value in graph.input if value.name in input_names]
    del graph.input[:]
    graph.input.extend(kept)
    if external_data is None:  # what is written: a weight two names share (tied embeddings) may count twice
        external_data = needs_external_data(sum(t.numel() * t.element_size() for t in tensors.values()))
    write_model(model, tensors, output, external_data)


def _size_undeclared_axes(model, dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Give an output axis that the config does not declare dynamic its size, where the graph fixes it.

    Whether torch's exporter can size an axis depends on the model code: CodeGen's hidden axis,
    a reshape to ``size()[:-2] + (heads * head_dim,)``, is 32 on transformers 5 and named
    ``Reshapelast_hidden_state_dim_2`` on 4.57. ONNX shape inference with data propagation
    follows such a reshape through the graph; an axis it sizes gets that number. An axis it
    cannot size keeps its name: only the graph decides, never the export's example inputs.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    sizes = {value.name: value.type.tensor_type.shape.dim for value in inferred.graph.output}
    for value in model.graph.output:
        declared = dynamic_axes.get(value.name, {})
        known = sizes.get(value.name, ())
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if index not in declared and dim.HasField("dim_param") and index < len(known) and known[index].HasField("dim_value"):
                dim.dim_value = known[index].dim_value


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    tensor = tensor.contiguous().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: the same bytes as int16
        tensor = tensor.view(torch.int16)
    return memoryview(tensor.numpy()).cast("B")


def write_model(model, tensors: Mapping[str, torch.Tensor], output: Path, external_data: bool) -> None:
    """Write ``model`` with ``tensors`` as its initializers, each tensor's bytes copied once.

    Why not ``onnx.save_model``: building TensorProtos copies every weight twice and protobuf's
    serialiser a third time; on this class of machine that is seconds per copy of a BERT-base.
    The protobuf wire format lets a message be written as several fragments that a parser
    merges (repeated fields append), so the graph is serialised by onnx and each initializer is
    appended as a ``graph { initializer { ... raw_data } }`` fragment written straight from the
    tensor's memory. With ``external_data`` the weights go, in order, to ``<output>.data``.
    """
    import onnx

    graph = model.graph
    if external_data:
        data_name = output.name + ".data"
        offset = 0
        with open(output.parent / data_name, "wb") as data:
            for name, tensor in tensors.items():
                raw = _tensor_bytes(tensor)
                data.write(raw)
                proto = onnx.TensorProto(name=name, dims=list(tensor.shape), data_type=_ONNX_DTYPES[tensor.dtype])
                proto.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(raw.nbytes))):
                    proto.external_data.add(key=key, value=value)
                graph.initializer.append(proto)
                offset += raw.nbytes
        onnx.save_model(model, str(output))
        return
    with open(output, "wb") as out:
        out.write(model.SerializeToString())
        for name, tensor in tensors.items():
            raw = _tensor_bytes(tensor)
            meta = onnx.TensorProto(name=name, dims=list(tensor.shape), data_type=_ONNX_DTYPES[tensor.dtype]).SerializeToString()
            tensor_head = meta + b"\x4a" + _varint(raw.nbytes)  # TensorProto.raw_data = 9
            tensor_len = len(tensor_head) + raw.nbytes
            initializer_head = b"\x2a" + _varint(tensor_len)  # GraphProto.initializer = 5
            graph_len = len(initializer_head) + tensor_len
            out.write(b"\x3a" + _varint(graph_len) + initializer_head + tensor_head)  # ModelProto.graph = 7
            out.write(raw)


def _fold_weight_transposes(graph, tensors: dict[str, torch.Tensor]) -> None:
    """Replace ``Transpose(weight)`` by a transposed weight where the weight has no other use."""
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    graph_outputs = {value.name for value in graph.output}
    folded = []
    for node in graph.node:
        source = node.input[0] if node.input else None
        if node.op_type != "Transpose" or source not in tensors or uses[source] != 1 or node.output[0] in graph_outputs:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        tensor = tensors.pop(source)
        # a view: the writer copies it contiguous when it writes it, one weight at a time
        tensors[node.output[0]] = tensor.permute(*(perm if perm is not None else reversed(range(tensor.dim()))))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)


def to_model_precision(inputs: Mapping[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """``inputs`` with floating values (pixels, caches) in the model's precision; ids and masks as they are.

    Tensors stay tensors and arrays stay arrays: the exporter takes the first, validation the second.
    """
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if dtype == torch.float32:
        return dict(inputs)
    out = {}
    for name, value in inputs.items():
        if torch.is_tensor(value):
            out[name] = value.to(dtype) if value.is_floating_point() else value
        elif getattr(value, "dtype", None) is not None and value.dtype.kind == "f":
            out[name] = value.astype(torch.empty((), dtype=dtype).numpy().dtype)
        else:
            out[name] = value
    return out


def run_reference(model: torch.nn.Module, config: OnnxConfig, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The reference model's outputs, named as the config's, as numpy arrays."""
    flat = FlatModel(prepare_model(model, config), list(inputs), list(config.outputs))
    tensors = tuple(torch.as_tensor(value) for value in inputs.values())
    with torch.no_grad():
        outputs = flat(*tensors)
    return {name: value.detach().cpu().numpy() for name, value in zip(config.outputs, outputs)}


def weight_bytes(model: torch.nn.Module) -> int:
    """The bytes of the model's weights, as the graph would store them (a tied weight once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def sequence_reference(model: torch.nn.Module, config: OnnxConfig, inputs: Mapping[str, Any], output: str) -> Any:
    """The model's ``output`` (``logits`` or ``last_hidden_state``) at every position of named ``inputs`` (numpy): one pass, no cache.

    A generation check's reference (:mod:`hatch_onnx.generation`, :mod:`hatch_onnx.graph_sets`):
    the sequence a graph decoded, read at once, gives every step's reference.
    Returns numpy (batch, sequence, ...), in float32.
    """
    import numpy as np

    model = prepare_model(model, config)
    with torch.no_grad():
        out = model(**{name: torch.from_numpy(np.asarray(value)) for name, value in inputs.items()}, use_cache=False, return_dict=True)
    return getattr(out, output).float().numpy()


def weights_reaching_outputs(model: torch.nn.Module, config: OnnxConfig, inputs: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """Which of the parameters ``names`` influence the exported outputs (by one backward pass).

    A checkpoint may lack weights the exported graph never uses (BERT's pooler under the
    ``default`` feature); only those that reach an output make a head "new".
    """
    params = dict(model.named_parameters())
    candidates = [name for name in names if name in params and params[name].is_floating_point()]
    if not candidates:
        return []
    flat = FlatModel(prepare_model(model, config), list(inputs), list(config.outputs))
    tensors = tuple(torch.as_tensor(value) for value in inputs.values())
    saved = {name: params[name].requires_grad for name in candidates}
    try:
        for name in candidates:
            params[name].requires_grad_(True)
        with torch.enable_grad():
            outputs = [o for o in flat(*tensors) if o.is_floating_point()]
            total = sum(o.sum() for o in outputs)
            grads = torch.autograd.grad(total, [params[n] for n in candidates], allow_unused=True)
    finally:
        for name, flag in saved.items():
            params[name].requires_grad_(flag)
    return [name for name, grad in zip(candidates, grads) if grad is not None]

