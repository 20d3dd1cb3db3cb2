"""``exporter: fused``: a rotary decoder's graph written op by op from its weights, with fused ops, behind the pinned interface.

torch.onnx traces a decoder into some 270 nodes a layer (shape arithmetic, the rotation and the
attention spelt out in primitives): onnxruntime then spends more time between kernels than in
them (1.13x onnxruntime-genai's fp32 graph per decoded token on a 0.5B, 1.74x in int4).
onnxruntime-genai's builder writes a dozen fused nodes a layer, but behind its own interface
(right padding, no ``position_ids``: :mod:`hatch_onnx.genai_builder`). This module writes the
fused graph behind the pinned one, the interface the default exporter's graph has (left
padding, ``position_ids``, the config's names, order and axes), so Optimum, transformers.js
and onnxruntime-genai run it as they run the traced graph. It is validated against the PyTorch
model like every export (the one-step draw and the generation check).

Why not onnxruntime-genai's builder or onnxruntime's optimizer: the builder's graph cannot take a
left-padded batch (its ``GroupQueryAttention`` places rows by their lengths), and onnxruntime's
Python optimizer does not recognise today's traced attention (and needed 8.3x the weights in
memory on the 0.5B). The graph below is small enough to write directly; what makes it fast is
onnxruntime's kernels, not this code.

================  =====================================================================================
once              ``Gather`` of the embedding, its rows flattened to (batch x sequence, hidden) for the
                  Gemms; the attention bias (``Where`` of a bool mask: causal over cache positions, the
                  attention mask's padding, and Mistral's sliding window), shape (batch, 1, sequence,
                  past + sequence), built once and read by every layer
each layer        ``SkipSimplifiedLayerNormalization`` (the residual add and RMS norm in one; layer 0's
                  is opset 23's ``RMSNormalization``); one ``Gemm`` for q, k and v packed (their bias
                  its ``C``), ``Reshape`` to (batch, sequence, -1), ``Split``; Qwen3's per-head
                  ``RMSNormalization`` of q and k; ``RotaryEmbedding`` of q and k at ``position_ids``;
                  ``Attention`` (opset 23: grouped heads, the cache concatenated inside, present out;
                  each past through a ``Reshape`` that gives an empty cache the batch's rows); the
                  output projection; the post-attention ``SkipSimplifiedLayerNormalization``; gate and
                  up, SiLU (``Sigmoid``, ``Mul``), ``Mul``, the down projection
head              ``SkipSimplifiedLayerNormalization`` (the final norm), the LM head, ``Reshape`` to
                  (batch, sequence, vocab); a head tied to the embedding reads the table itself, so it
                  is stored once
projections       each a ``Gemm`` with ``transB``: the weight as the checkpoint stores it, (out, in), so
                  the export writes the model's tensors as they are (nothing transposed in memory; a
                  MatMul would need (in, out): a copy to write, or a ``Transpose`` a session folds
                  into a second copy when it opens) and the validation sessions read them in place.
                  Only q, k and v are packed (a copy: a twelfth of a Qwen2.5 or Llama 3 layer)
opset             :data:`OPSET` (``Attention``, ``RotaryEmbedding``, ``RMSNormalization``), plus
                  onnxruntime's ``com.microsoft`` norms; not the job's ``opset``: the report says the
                  graph's
positions         the rotation's tables cover ``max_position_embeddings`` positions (computed by the
                  model's own rotary module, with its scaling); a position past them is an error in
                  onnxruntime, where the traced graph would compute on
weights           to ``<graph>.data`` when the graph needs external data
                  (:func:`hatch_onnx.config.needs_external_data`), appended as they are read, past the
                  page cache (:class:`_DataFile`), under the checkpoint's names; :class:`Built` keeps
                  their arrays, which the export's sessions read instead of the file
================  =====================================================================================

Which exports (:func:`check`, config.json only, before any model loads; exit 2 otherwise):
PyTorch ``causal-lm-with-past`` of the :data:`FAMILIES` (Llama, Mistral, Qwen2, Qwen3), with
SiLU MLPs without bias, rotary tables fixed at build time (not ``dynamic`` or ``longrope``),
all layers with the same attention span, in float32 or float16.

Light at import: the checks read config.json; numpy, onnx and torch are imported by :func:`build`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from hatch_onnx.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

EXPORTER = "fused"
FEATURE = "causal-lm-with-past"
# Attention (grouped heads, a cache, an additive mask), RotaryEmbedding with position ids and
# RMSNormalization are ONNX ops from opset 23.
OPSET = 23
CONTRIB = "com.microsoft"
DTYPES = ("float32", "float16")
# The oldest onnxruntime these graphs have run on (transformers.js's onnxruntime-node 1.30, and
# 1.32): older releases lack opset 23's Attention on CPU, or may.
MIN_ONNXRUNTIME = (1, 30)
# Rotary tables that do not depend on the sequence: the model's rotary module computes them once.
STATIC_ROPE = (None, "default", "linear", "llama3", "yarn")
# Tensors are placed at offsets that are multiples of this in the external-data file, so that
# onnxruntime can map them rather than copy them.
ALIGNMENT = 4096
# Smaller tensors stay in the graph even with external data: shape inference reads constants
# (a Split's sizes, a Reshape's shape) and cannot read them from the data file.
INLINE_BYTES = 1024


# The ops whose outputs are activations in the model's dtype (the others compute shapes, positions and masks).
FLOAT_OPS = frozenset({"Gather", "SkipSimplifiedLayerNormalization", "Split", "Reshape", "RMSNormalization", "RotaryEmbedding",
                       "Attention", "Sigmoid", "Mul", "Gemm", "Where"})


@dataclass(frozen=True)
class Family:
    """What a model type's decoder layers add to the common Llama layer."""

    model_type: str
    qk_norm: bool = False  # an RMS norm of each query and key head before the rotation (Qwen3)
    sliding_window: bool = False  # every layer attends within config.sliding_window positions (Mistral)
    # the config key that turns a sliding window on for some layers (refused: one span for all layers here)
    sliding_switch: Optional[str] = None


FAMILIES: Mapping[str, Family] = {f.model_type: f for f in (
    Family("llama"),
    Family("mistral", sliding_window=True),
    Family("qwen2", sliding_switch="use_sliding_window"),
    Family("qwen3", qk_norm=True, sliding_switch="use_sliding_window"),
)}


def applies(exporter: Optional[str]) -> bool:
    return exporter == EXPORTER


def writes(model_dir: Path, model_type: str, feature: str, framework: str, dtype: str, opset: Optional[int]) -> bool:
    """Whether a job that names no exporter gets this one: :func:`check` passes, ``opset`` is None or :data:`OPSET` or
    above, and the installed onnxruntime, which validates the graph, is one it has run on (:data:`MIN_ONNXRUNTIME`).

    ``opset`` is a demand: the CLI's ``--opset`` (the graph is exported with it, as in transformers.onnx's
    CLI: below 23, the job is traced at it). A plan passes None: params' opset is a default, which an
    architecture's minimum, and this writer's, overrides.
    """
    if opset is not None and opset < OPSET:
        return False
    try:  # refuses another framework, feature or type before it reads config.json
        check(model_dir, model_type, feature, framework, dtype)
    except (BadInputError, OSError, ValueError):  # an unreadable config.json is reported by the load, not here
        return False
    return _onnxruntime_at_least(MIN_ONNXRUNTIME)


def _onnxruntime_at_least(minimum: tuple[int, int]) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = tuple(int(part) for part in version("onnxruntime").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return found >= minimum


def _rope_type(config: Mapping[str, Any]) -> Optional[str]:
    # transformers 5 writes rope_parameters, 4.x rope_scaling; either may be absent
    for key in ("rope_parameters", "rope_scaling"):
        value = config.get(key)
        if isinstance(value, Mapping):
            return value.get("rope_type") or value.get("type")
    return None


def check(model_dir: Path, model_type: str, feature: str, framework: str, dtype: str) -> None:
    """Refuse (:class:`BadInputError`, exit 2) what this exporter does not write, reading config.json only."""
    where = f"{model_dir}: exporter fused"
    if framework != "pt":
        raise BadInputError(f"{where} builds from PyTorch checkpoints only; this one is {framework}")
    if feature != FEATURE:
        raise BadInputError(f"{where} exports {FEATURE} only, not feature {feature!r}")
    family = FAMILIES.get(model_type)
    if family is None:
        raise BadInputError(f"{where}: model type {model_type!r} is not one it writes (it writes: {', '.join(FAMILIES)})")
    if dtype not in DTYPES:
        raise BadInputError(f"{where}: dtype {dtype}: choose {' or '.join(DTYPES)}")
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise BadInputError(f"{where}: hidden_act {act!r}: it writes SiLU MLPs only")
    if config.get("mlp_bias"):
        raise BadInputError(f"{where}: mlp_bias: it writes MLPs without bias only")
    rope = _rope_type(config)
    if rope not in STATIC_ROPE:
        raise BadInputError(f"{where}: rope type {rope!r} changes with the sequence; it writes fixed rotary tables "
                            f"({', '.join(t for t in STATIC_ROPE if t)})")
    if family.sliding_switch and config.get(family.sliding_switch):
        raise BadInputError(f"{where}: {family.sliding_switch}: it writes layers that attend over the whole cache only")
    layer_types = set(config.get("layer_types") or ())
    if len(layer_types) > 1:
        raise BadInputError(f"{where}: layer_types {sorted(layer_types)}: it writes one attention span for all layers")


class _DataFile:
    """An external-data file written front to back through two page-aligned buffers, by one thread, bypassing the page cache.

    Written through the page cache, a 0.5B decoder's 1.84 GB took 2.7-5.6 s on the 2-core
    machine, nearly all of it the kernel filling fresh page-cache pages (``dd``: 0.4 GB/s);
    ``O_DIRECT`` writes went at 2.0-2.3 GB/s (the 0.5B's build: 2.7-3.4 s before, 1.4-1.5 s
    with them and the layout that needs no transposes). Nothing in the export reads the file back: the
    validation sessions read each weight from the array it was written from (:attr:`_Initializers.values`),
    so a cached copy would only take memory. The caller copies the next matrix into one buffer
    while the thread writes the other. Where ``O_DIRECT`` is refused (tmpfs, not Linux), the same
    writes go through the page cache.
    """

    CHUNK = 8 << 20  # bytes a buffer holds; a multiple of BLOCK
    BLOCK = 4096  # O_DIRECT writes start and end on the device's blocks: 4096 is a multiple of any of them

    def __init__(self, path: Path):
        import mmap
        from concurrent.futures import ThreadPoolExecutor

        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        direct = getattr(os, "O_DIRECT", 0)
        try:
            self._fd = os.open(path, flags | direct, 0o666)
        except OSError:  # a file system without direct I/O
            self._fd, direct = os.open(path, flags, 0o666), 0
        self.direct = bool(direct)
        self.size = 0  # bytes appended so far: the file's length once closed
        self._buffers = [mmap.mmap(-1, self.CHUNK) for _ in range(2)]  # anonymous maps start on a page, as O_DIRECT needs
        self._writes: list[Any] = [None, None]  # each buffer's write in flight
        self._current, self._filled = 0, 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="fused-weights")

    def append(self, data: memoryview, alignment: int) -> int:
        """Append ``data`` (bytes) at the next multiple of ``alignment``, zeros before it; its offset."""
        self._put(memoryview(bytes(-self.size % alignment)))
        offset = self.size
        self._put(data)
        return offset

    def _put(self, data: memoryview) -> None:
        while len(data):
            count = min(len(data), self.CHUNK - self._filled)
            self._buffers[self._current][self._filled:self._filled + count] = data[:count]
            self._filled += count
            self.size += count
            data = data[count:]
            if self._filled == self.CHUNK:
                self._submit()

    def _submit(self) -> None:
        """Hand the current buffer to the thread; wait until the other is written (a failed write raises here)."""
        self._writes[self._current] = self._writer.submit(self._write, self._current, self._filled)
        self._current, self._filled = 1 - self._current, 0
        pending, self._writes[self._current] = self._writes[self._current], None
        if pending is not None:
            pending.result()

    def _write(self, index: int, length: int) -> None:
        # whole blocks when direct: the last buffer's tail past ``length`` is cut off by close()
        view = memoryview(self._buffers[index])[:-(-length // self.BLOCK) * self.BLOCK if self.direct else length]
        try:
            while len(view):
                view = view[os.write(self._fd, view):]
        except OSError as error:
            if not self.direct or error.errno != errno.EINVAL:
                raise
            # a file system that opens files for direct I/O but refuses the writes: through the page cache from here
            import fcntl

            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False
            self._write(index, length)

    def close(self) -> None:
        """Write what is buffered, wait for every write (raising the first that failed), cut the file to :attr:`size`, close it."""
        try:
            if self._filled:
                self._submit()
            for index in (0, 1):
                pending, self._writes[index] = self._writes[index], None
                if pending is not None:
                    pending.result()
            os.ftruncate(self._fd, self.size)
        finally:
            self._writer.shutdown(wait=True, cancel_futures=True)
            os.close(self._fd)
            for buffer in self._buffers:
                buffer.close()


class _Initializers:
    """A graph's initializers, each placed as it comes: inline, or appended to an external-data file (:class:`_DataFile`).

    onnx's own external-data conversion serialises a whole in-memory proto first; this copies one
    buffer's worth at a time, which is what lets an 8B export fit beside its model. An external
    tensor's array is kept, by reference, in :attr:`values`: the model's own tensors (and the few
    made here: packed q, k and v, the rotary tables), which a validation session reads in place
    (:func:`hatch_onnx.validation.open_session`), so the file is written once and not read back.
    """

    def __init__(self, data_path: Optional[Path]):
        self.tensors: list[Any] = []
        self.values: dict[str, "np.ndarray"] = {}  # name -> array, of each tensor in the data file
        self.data_path = data_path
        self._file = _DataFile(data_path) if data_path is not None else None
        self._offsets: dict[str, int] = {}

    def add(self, name: str, array: "np.ndarray") -> str:
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        array = np.ascontiguousarray(array)
        if self._file is None or array.nbytes < INLINE_BYTES:
            self.tensors.append(numpy_helper.from_array(array, name))
            return name
        offset = self._file.append(_bytes_of(array), ALIGNMENT)
        tensor = TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_path.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.tensors.append(tensor)
        self.values[name] = array
        self._offsets[name] = offset
        return name

    def close(self) -> None:
        """Finish the data file (raising the first write that failed), then read each tensor's ends back from it.

        The validation sessions read the arrays, not the file: the check that each tensor's first
        and last bytes are in the file where its graph says (a few pages, read back in
        milliseconds) ties what they validate to what ships.
        """
        if self._file is None:
            return
        self._file.close()
        with open(self.data_path, "rb") as data:
            for name, offset in self._offsets.items():
                expected = _bytes_of(self.values[name])
                ends = min(len(expected), 64)
                for start in (0, len(expected) - ends):
                    data.seek(offset + start)
                    if data.read(ends) != expected[start:start + ends]:
                        raise OSError(f"{self.data_path}: {name} is not where the graph places it (offset {offset + start})")


def _bytes_of(array: "np.ndarray") -> memoryview:
    """The array's own bytes, not a copy."""
    return memoryview(array.reshape(-1)).cast("B")


class _Nodes:
    """Nodes in order, each output named after the node (``<scope>/<op>_<k>``)."""

    def __init__(self):
        self.nodes: list[Any] = []
        self.scope = ""

    def __call__(self, op: str, inputs: list[str], outputs: int = 1, domain: str = "", names: Optional[list[str]] = None,
                 unused: tuple[int, ...] = (), **attributes: Any) -> Any:
        """Add a node; its output name(s). ``unused`` outputs are left unnamed (onnxruntime then skips them)."""
        from onnx import helper

        name = f"{self.scope}/{op}_{len(self.nodes)}"
        names = names or ["" if k in unused else f"{name}/out{k}" if k else f"{name}/out" for k in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, domain=domain or None, **attributes))
        return names[0] if len(names) == 1 else names


@dataclass(frozen=True)
class Built:
    """What :func:`build` wrote: the graph's output names, and the arrays of the tensors it put in the data file."""

    outputs: list[str]
    # name -> array (the model's own tensors, not copies): what a validation session reads in place of the file
    weights: Mapping[str, "np.ndarray"]


def build(model: Any, onnx_config: Any, target: Path, external: bool) -> Built:
    """Write ``model``'s fused graph to ``target`` (its weights to ``target``.data when ``external``)."""
    import numpy as np
    import onnx
    import torch
    from onnx import TensorProto, helper

    config = model.config
    family = FAMILIES[config.model_type]
    decoder = model.model
    dtype = np.dtype(str(model.dtype).replace("torch.", ""))
    onnx_dtype = helper.np_dtype_to_tensor_dtype(dtype)
    layers = decoder.layers
    attention0 = layers[0].self_attn
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_size = attention0.head_dim
    eps = float(config.rms_norm_eps)

    data_path = target.with_name(target.name + ".data") if external else None
    weights = _Initializers(data_path)
    node = _Nodes()
    try:
        with torch.no_grad():
            # --- once: embedding, rotary tables, the attention bias ----------------------------
            embedding = weights.add("model.embed_tokens.weight", decoder.embed_tokens.weight.detach().numpy())
            positions = torch.arange(config.max_position_embeddings).unsqueeze(0)
            cos, sin = decoder.rotary_emb(torch.zeros(1, dtype=model.dtype), positions)
            half = cos.shape[-1] // 2  # transformers' tables repeat the half rotation: cat(freqs, freqs)
            cos_cache = weights.add("rotary.cos", cos[0, :, :half].numpy().astype(dtype))
            sin_cache = weights.add("rotary.sin", sin[0, :, :half].numpy().astype(dtype))
            constants = {
                "zero": np.array(0, np.int64), "one": np.array(1, np.int64), "axis0": np.array([0], np.int64),
                "axis1": np.array([1], np.int64), "axes12": np.array([1, 2], np.int64), "last": np.array([-1], np.int64),
                "allowed": np.array(0, dtype), "masked": np.array(np.finfo(dtype).min, dtype),
                "q_split": np.array([heads * head_size, kv_heads * head_size, kv_heads * head_size], np.int64),
                "cache_tail": np.array([kv_heads, -1, head_size], np.int64), "rows": np.array([-1, config.hidden_size], np.int64),
                "context_rows": np.array([-1, heads * head_size], np.int64),
                "q_heads": np.array([0, 0, heads, head_size], np.int64), "q_flat": np.array([0, 0, heads * head_size], np.int64),
                "kv_heads": np.array([0, 0, kv_heads, head_size], np.int64), "kv_flat": np.array([0, 0, kv_heads * head_size], np.int64),
            }  # those no node reads (a family's only) are left out of the graph below
            window = getattr(config, "sliding_window", None) if family.sliding_window else None
            if window:
                constants["window"] = np.array(window, np.int64)
            for name, value in constants.items():
                weights.add(f"const.{name}", value)
            c = {name: f"const.{name}" for name in constants}

            def linear(x: str, module: Any, name: str) -> str:
                """``x @ W.T + b``: the weight as the checkpoint stores it, (out, in), read transposed by a Gemm."""
                operands = [x, weights.add(f"{name}.weight", module.weight.detach().numpy())]
                if module.bias is not None:
                    operands.append(weights.add(f"{name}.bias", module.bias.detach().numpy()))
                return node("Gemm", operands, transB=1)

            node.scope = "model/embed"
            # the activations are rows, (batch x sequence, hidden), for the Gemms; (batch, sequence, -1) where ops need the axes
            residual = node("Reshape", [node("Gather", [embedding, "input_ids"]), c["rows"]])
            sequence_shape = node("Concat", [node("Shape", ["input_ids"]), c["last"]], axis=0)
            node.scope = "model/bias"
            total = node("Squeeze", [node("Shape", ["attention_mask"], start=1, end=2), c["axis0"]])
            sequence = node("Squeeze", [node("Shape", ["input_ids"], start=1, end=2), c["axis0"]])
            key_index = node("Unsqueeze", [node("Range", [c["zero"], total, c["one"]]), c["axis0"]])  # (1, T)
            query_index = node("Unsqueeze", [node("Range", [node("Sub", [total, sequence]), total, c["one"]]), c["axis1"]])  # (S, 1)
            visible = node("LessOrEqual", [key_index, query_index])  # causal over cache positions
            if window:  # Mistral: key k is in query q's window when q - k < window
                visible = node("And", [visible, node("Less", [node("Sub", [query_index, key_index]), c["window"]])])
            kept = node("Unsqueeze", [node("Cast", ["attention_mask"], to=TensorProto.BOOL), c["axes12"]])  # (B, 1, 1, T)
            bias = node("Where", [node("And", [kept, visible]), c["allowed"], c["masked"]])  # (B, 1, S, T)
            # An empty cache may come with any batch (transformers.js sizes the first step's at 0 rows:
            # its shape resolver does not know the axis name "batch"); the traced graph's Concat ignores
            # it, Attention does not. Each past is reshaped to (B, kv heads, -1, head size): free for a
            # real cache, the right batch for an empty one.
            cache_shape = node("Concat", [node("Shape", ["input_ids"], start=0, end=1), c["cache_tail"]], axis=0)

            # --- the layers ----------------------------------------------------------------------
            previous: Optional[str] = None  # the last layer's output, before its residual add
            for i, layer in enumerate(layers):
                attention, mlp = layer.self_attn, layer.mlp
                name = f"model.layers.{i}"
                node.scope = f"model/layers.{i}"
                norm = weights.add(f"{name}.input_layernorm.weight", layer.input_layernorm.weight.detach().numpy())
                if previous is None:
                    hidden = node("RMSNormalization", [residual, norm], epsilon=eps, axis=-1, stash_type=1)
                else:
                    hidden, residual = node("SkipSimplifiedLayerNormalization", [previous, residual, norm], outputs=4, unused=(1, 2),
                                            domain=CONTRIB, epsilon=eps)[0::3]
                # q, k and v by one Gemm: their weights packed, a copy (a twelfth of a Qwen2.5 or Llama 3
                # layer's weights), which saves a layer two Gemms and the Reshapes after them (decode
                # runs one node after another: each costs microseconds)
                projections = (attention.q_proj, attention.k_proj, attention.v_proj)
                qkv = [hidden, weights.add(f"{name}.self_attn.qkv_proj.weight", torch.cat([p.weight for p in projections]).numpy())]
                if attention.q_proj.bias is not None:
                    qkv.append(weights.add(f"{name}.self_attn.qkv_proj.bias", torch.cat([p.bias for p in projections]).numpy()))
                query, key, value = node("Split", [node("Reshape", [node("Gemm", qkv, transB=1), sequence_shape]), c["q_split"]],
                                         outputs=3, axis=-1)
                if family.qk_norm:
                    for which, norm_module, shape, flat in (("q", attention.q_norm, c["q_heads"], c["q_flat"]),
                                                           ("k", attention.k_norm, c["kv_heads"], c["kv_flat"])):
                        scale = weights.add(f"{name}.self_attn.{which}_norm.weight", norm_module.weight.detach().numpy())
                        per_head = node("Reshape", [query if which == "q" else key, shape])
                        normed = node("Reshape", [node("RMSNormalization", [per_head, scale], axis=-1, epsilon=eps, stash_type=1), flat])
                        query, key = (normed, key) if which == "q" else (query, normed)
                query = node("RotaryEmbedding", [query, cos_cache, sin_cache, "position_ids"], num_heads=heads)
                key = node("RotaryEmbedding", [key, cos_cache, sin_cache, "position_ids"], num_heads=kv_heads)
                past = [node("Reshape", [f"past_key_values.{i}.{kind}", cache_shape]) for kind in ("key", "value")]
                context = node("Attention", [query, key, value, bias, *past],
                               names=[f"{node.scope}/attention", f"present.{i}.key", f"present.{i}.value"],
                               q_num_heads=heads, kv_num_heads=kv_heads, scale=float(attention.scaling))[0]
                out = linear(node("Reshape", [context, c["context_rows"]]), attention.o_proj, f"{name}.self_attn.o_proj")
                post = weights.add(f"{name}.post_attention_layernorm.weight", layer.post_attention_layernorm.weight.detach().numpy())
                hidden, residual = node("SkipSimplifiedLayerNormalization", [out, residual, post], outputs=4, unused=(1, 2), domain=CONTRIB,
                                        epsilon=eps)[0::3]
                gate = linear(hidden, mlp.gate_proj, f"{name}.mlp.gate_proj")
                activated = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate])]), linear(hidden, mlp.up_proj, f"{name}.mlp.up_proj")])
                previous = linear(activated, mlp.down_proj, f"{name}.mlp.down_proj")

            # --- the head --------------------------------------------------------------------------
            node.scope = "model/head"
            final = weights.add("model.norm.weight", decoder.norm.weight.detach().numpy())
            hidden = node("SkipSimplifiedLayerNormalization", [previous, residual, final], outputs=4, unused=(1, 2), domain=CONTRIB, epsilon=eps)[0]
            head = model.get_output_embeddings()
            # A tied head reads the embedding table: stored once, and read as it is (a MatMul would need
            # Transpose(table), which onnxruntime folds into a second table whenever a session opens).
            table = embedding if head.weight.data_ptr() == decoder.embed_tokens.weight.data_ptr() else weights.add(
                "lm_head.weight", head.weight.detach().numpy())
            node("Reshape", [node("Gemm", [hidden, table], transB=1), sequence_shape], names=["logits"])
    finally:
        weights.close()

    inputs, outputs = _interface(onnx_config, config, onnx_dtype, kv_heads, head_size)
    # Each activation's type, said: onnx's shape inference stops at onnxruntime's norms, and tools
    # that read types (onnxruntime's int8 quantizer) then fail on every tensor after the first.
    interface = {value.name for value in outputs}
    typed = [helper.make_tensor_value_info(name, onnx_dtype, None) for n in node.nodes if n.op_type in FLOAT_OPS
             for name in n.output if name and name not in interface]
    read = {name for n in node.nodes for name in n.input}
    initializers = [tensor for tensor in weights.tensors if tensor.name in read]
    graph = helper.make_graph(node.nodes, "main_graph", inputs, outputs, initializers, value_info=typed)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(CONTRIB, 1)]
    # the oldest IR version these opsets need, not the installed onnx's newest: runtimes refuse IR versions newer than theirs
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="hatch-onnx fused",
                              ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True))
    onnx.save(proto, str(target))
    return Built([value.name for value in outputs], weights.values)


def _interface(onnx_config: Any, config: Any, onnx_dtype: int, kv_heads: int, head_size: int) -> tuple[list, list]:
    """The pinned interface: the config's inputs and outputs, in its order, with its axis names."""
    from onnx import TensorProto, helper

    def value(name: str, axes: Mapping[int, str]) -> Any:
        if name.startswith(("past_key_values.", "present.")):
            elem, shape = onnx_dtype, [None, kv_heads, None, head_size]
        elif name == "logits":
            elem, shape = onnx_dtype, [None, None, config.vocab_size]
        else:
            elem, shape = TensorProto.INT64, [None, None]
        return helper.make_tensor_value_info(name, elem, [axes.get(k, d) for k, d in enumerate(shape)])

    return ([value(n, axes) for n, axes in onnx_config.inputs.items()],
            [value(n, axes) for n, axes in onnx_config.outputs.items()])
