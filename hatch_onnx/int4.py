"""The ``int4`` variant: weight-only 4-bit quantisation, and the reference it is checked against.

==================  ===========================================================================
MatMul              every MatMul whose weight is a 2-D float initializer becomes ``MatMulNBits``
                    (onnxruntime's ``MatMulNBitsQuantizer``); a ``Gemm`` with a constant weight
                    is first rewritten as MatMul (+ Add): GPT-2's Conv1D exports as Gemm, and
                    :mod:`hatch_onnx.fused` writes every projection as one, which the quantizer
                    does not take
embedding tables    every 2-D float initializer a ``Gather`` reads along axis 0, at least
                    :data:`BLOCK_SIZE` wide, becomes ``GatherBlockQuantized`` on uint8 data
                    packed as MatMulNBits packs its weights (without them a tied 0.5B decoder
                    stays at 0.27x its fp32 size: its table is a quarter of its weights)
tied tables         a table read by a Gather and, transposed, by the LM head's MatMul is stored
                    once: as the head's MatMulNBits weight, which the GatherBlockQuantized reads
                    through a Reshape (onnxruntime-genai's builder shares it the same way)
==================  ===========================================================================

Numerics (:func:`fake_quantize`): symmetric round-to-nearest in blocks of :data:`BLOCK_SIZE`
along the reduction axis (K of a MatMul weight, the hidden axis of a table), one float32 scale
per block, ``dequantised = q * scale`` with ``q`` in [-8, 7] and ``scale = the block's
largest-magnitude value / -8``. Symmetric, as onnxruntime-genai's builder defaults to for CPU:
no zero-point tensors (4 bits fewer per block), the kernel skips the zero-point subtraction, and
the graph is timed against genai's own int4 graph on equal terms; asymmetric blocks fit skewed
weights a little better, which the validation below would show if it mattered.

Validation (:func:`fake_quantized`): a cosine floor against the float32 model cannot tell a
correct int4 graph from one whose weights are 5% off (int4's own error is larger than a 5%
change to one matrix). The weights are checked instead against a reference that has int4's
numerics: the source graph with each weight this module quantises replaced by
``dequantise(quantise(W))``, computed here in numpy, independently of onnxruntime's kernel. The
int4 graph, run with float32 arithmetic (:func:`with_float_arithmetic`: the same weights, its
``accuracy_level`` attribute dropped), must reproduce that reference to :data:`WEIGHTS_RTOL` of
each output's largest magnitude. The graph as shipped (int8 arithmetic, :data:`ACCURACY_LEVEL`)
keeps its cosine floor against the model as the other lossy variants do.

Light at import: onnx, numpy and onnxruntime are imported by the functions that use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_onnx.graph_passes import (drop_unused_initializers, gemms_to_matmuls, head_transposes_to_initializers, is_float32,
                                     node_attribute, readers_of, save_model)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx

# 32: onnxruntime-genai's CPU default and the smallest block its CPU kernels are tuned for; a
# scale per 32 weights costs 1 bit per weight (4.5 bits in all: 0.14x float32), and finer
# blocks follow outliers better than 128 (0.13x) would.
BLOCK_SIZE = 32
# MatMulNBits' accuracy_level 4: activations quantised to int8 per block and int8 dot products
# (onnxruntime's fastest CPU path on AVX2/AVX512-VNNI and ARM dot-product cores; genai's CPU
# default, so the decode-time comparison with its int4 graph is like for like).
ACCURACY_LEVEL = 4
SYMMETRIC = True
# The int4 graph at float32 arithmetic against the fake-quantised reference: both compute with
# the same dequantised weights, so they differ by float32 summation order only (measured: 1e-6
# of the largest output on the fixtures); a 5% change to one weight matrix moves outputs by
# 1e-2 and more (tests/test_variants.py).
WEIGHTS_RTOL = 1e-4


@dataclass
class Plan:
    """What int4 quantises in a (prepared) graph: MatMul weights and embedding tables, by initializer name."""

    matmul_weights: set[str] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)
    tied: dict[str, str] = field(default_factory=dict)  # table -> its transposed copy, the LM head's weight


def prepare(model: "onnx.ModelProto") -> Plan:
    """Rewrite constant-weight Gemms as MatMul (+ Add) and materialise a tied table's transpose; say what int4 quantises.

    The tied table's transpose is a second float table only until :func:`quantize` shares the
    head's quantised weight with the Gather (and in :func:`fake_quantized`'s in-memory reference).
    """
    graph = model.graph
    gemms_to_matmuls(graph)
    plan = Plan()
    plan.tied.update(_gathered_transposes_to_tables(graph))
    inits = {t.name: t for t in graph.initializer}
    gathered: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.input[0] in inits:
            gathered.setdefault(node.input[0], []).append(node)
    consumers = readers_of(graph)

    for name, nodes in gathered.items():
        tensor = inits[name]
        if (len(tensor.dims) == 2 and tensor.dims[1] >= BLOCK_SIZE and is_float32(tensor)
                and all(node_attribute(n, "axis", 0) == 0 for n in nodes)
                and all(c.op_type in ("Gather", "Transpose") for c in consumers[name])):
            plan.tables.add(name)
    plan.tied.update(head_transposes_to_initializers(graph, plan.tables))  # Transpose(table) -> MatMul: the tied LM head
    for name in list(plan.tied):  # a table _gathered_transposes_to_tables made but the checks above refused
        if name not in plan.tables:
            plan.tied.pop(name)
    for name in set(plan.tables):  # a table also transposed for anything but a MatMul weight stays as it is
        if any(c.op_type == "Transpose" for c in consumers[name] if c.output[0] not in plan.tied.values()):
            plan.tables.discard(name)
            plan.tied.pop(name, None)
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[1] in inits:
            tensor = inits[node.input[1]]
            if len(tensor.dims) == 2 and is_float32(tensor):
                plan.matmul_weights.add(node.input[1])
    return plan


def quantize(source: Path, target: Path, external: bool) -> None:
    """Write the int4 variant of the graph at ``source`` to ``target`` (external data ``<target name>.data`` when ``external``)."""
    import logging

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer, MatMulNBitsQuantizer

    model = onnx.load(str(source))
    plan = prepare(model)
    for index, node in enumerate(model.graph.node):  # the quantizer excludes by node name
        if not node.name:
            node.name = f"/int4/unnamed_{index}"
    excluded = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in plan.matmul_weights]
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line per node at INFO
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=BLOCK_SIZE, is_symmetric=SYMMETRIC, accuracy_level=ACCURACY_LEVEL,
                                     nodes_to_exclude=excluded, op_types_to_quantize=("MatMul",))
    quantizer.process()
    model = quantizer.model.model
    graph = model.graph
    _drop_repeated_initializers(graph)
    inits = {t.name: t for t in graph.initializer}
    packer = DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=SYMMETRIC, bits=4))

    for table_name in sorted(plan.tables):
        table = numpy_helper.to_array(inits[table_name])
        rows, width = table.shape
        k_blocks = -(-width // BLOCK_SIZE)
        shared = plan.tied.get(table_name)
        if shared is not None and f"{shared}_Q4" in inits:  # the LM head's weight, quantised by the quantizer
            data, scales = f"{table_name}/int4/data", f"{shared}_scales"
            shape = numpy_helper.from_array(np.array([rows, k_blocks * BLOCK_SIZE // 2], np.int64), f"{table_name}/int4/shape")
            graph.initializer.append(shape)
            graph.node.insert(0, helper.make_node("Reshape", [f"{shared}_Q4", shape.name], [data], name=f"{table_name}/int4/Reshape"))
        else:
            packed, block_scales, _ = packer.qbits_block_quant(np.ascontiguousarray(table.T))
            data, scales = f"{table_name}_Q4", f"{table_name}_scales"
            graph.initializer.extend([numpy_helper.from_array(packed.reshape(rows, -1), data),
                                      numpy_helper.from_array(block_scales, scales)])
        for position, node in enumerate(list(graph.node)):
            if node.op_type != "Gather" or node.input[0] != table_name:
                continue
            padded = k_blocks * BLOCK_SIZE != width
            output = f"{node.output[0]}/padded" if padded else node.output[0]
            replacement = [helper.make_node("GatherBlockQuantized", [data, node.input[1], scales], [output], name=f"{node.name}/int4",
                                            domain="com.microsoft", bits=4, block_size=BLOCK_SIZE, gather_axis=0, quantize_axis=1)]
            if padded:  # blocks pad each row to whole blocks: the padding is cut off
                bounds = [numpy_helper.from_array(np.array(v, np.int64), f"{node.name}/int4/{k}") for k, v in
                          (("starts", [0]), ("ends", [width]), ("axes", [-1]))]
                graph.initializer.extend(bounds)
                replacement.append(helper.make_node("Slice", [output, *(b.name for b in bounds)], [node.output[0]], name=f"{node.name}/int4/Slice"))
            index = list(graph.node).index(node)
            graph.node.remove(node)
            for offset, new in enumerate(replacement):
                graph.node.insert(index + offset, new)
    drop_unused_initializers(graph)
    save_model(model, target, external)


def recipe() -> dict[str, Any]:
    """The choices above, in the variant's settings (and so in its cache key and its manifest entry)."""
    return {"block_size": BLOCK_SIZE, "accuracy_level": ACCURACY_LEVEL, "symmetric": SYMMETRIC, "weights_rtol": WEIGHTS_RTOL}


def check_weights(source: Path, graph: Path, config: Any, inputs: Any, label: str = "variant int4") -> dict[str, Any]:
    """Raise unless the int4 ``graph`` made from ``source`` computes what its fake-quantised reference does; return the figures.

    Both run on ``inputs`` (the export's validation draw) in float32 arithmetic; each output's
    max abs diff must stay within :data:`WEIGHTS_RTOL` of the reference's largest magnitude.
    A weight changed after quantisation, quantised in another way, or left unquantised where
    the reference quantised it, shows here (:class:`~hatch_onnx.errors.AtolError`).
    """
    import numpy as np
    import onnx

    from hatch_onnx.validation import Tolerance, compare_output, compared_values

    reference = _run(fake_quantized(source), config, inputs, f"{label} reference")
    results = _run(with_float_arithmetic(onnx.load(str(graph))), config, inputs, f"{label} graph")
    figures = {}
    for name in config.outputs:
        expected, got = np.asarray(reference[name]), np.asarray(results[name])
        compared, _ = compared_values(config, inputs, name, expected, got)
        scale = float(np.abs(compared).max()) if compared.size and np.issubdtype(compared.dtype, np.floating) else 0.0
        atol = WEIGHTS_RTOL * scale if scale else WEIGHTS_RTOL
        figures[name] = compare_output(config, inputs, name, expected, got, Tolerance(atol=atol),
                                       prefix=f"{label}, weights against the fake-quantised reference: ")
        figures[name]["rtol"] = WEIGHTS_RTOL
    return figures


def _run(model: "onnx.ModelProto", config: Any, inputs: Any, what: str) -> dict[str, Any]:
    """``model``'s outputs on ``inputs``, through a file with external data when the proto is too large to serialise."""
    import tempfile

    from hatch_onnx.config import needs_external_data
    from hatch_onnx.validation import _feed, open_session

    with tempfile.TemporaryDirectory(prefix="hatch-onnx-int4-") as folder:
        path = Path(folder) / "model.onnx"
        # The project's external-data rule (config.needs_external_data): protobuf refuses to
        # serialise a message near 2 GiB (a 1.98 GB float graph failed here), well before the limit.
        save_model(model, path, external=needs_external_data(sum(len(t.raw_data) for t in model.graph.initializer)))
        del model
        session = open_session(path, what)
    names = [node.name for node in session.get_outputs()]
    return dict(zip(names, session.run(names, _feed(session, config, inputs))))


def fake_quantized(source: Path) -> "onnx.ModelProto":
    """The graph at ``source`` with int4's numerics in float32: each weight int4 quantises replaced by ``dequantise(quantise(W))``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    plan = prepare(model)
    replaced = []
    for tensor in model.graph.initializer:
        if tensor.name in plan.matmul_weights:  # blocks along K (axis 0 of a MatMul weight)
            replaced.append(numpy_helper.from_array(fake_quantize(numpy_helper.to_array(tensor)), tensor.name))
        elif tensor.name in plan.tables:  # blocks along the hidden axis (axis 1 of a table)
            replaced.append(numpy_helper.from_array(fake_quantize(numpy_helper.to_array(tensor).T).T.copy(), tensor.name))
        else:
            replaced.append(tensor)
    del model.graph.initializer[:]
    model.graph.initializer.extend(replaced)
    return model


def fake_quantize(weight: "np.ndarray") -> "np.ndarray":
    """``dequantise(quantise(weight))``, blocks of :data:`BLOCK_SIZE` along axis 0 (K), symmetric (see the module's docstring)."""
    import numpy as np

    k, n = weight.shape
    blocks = -(-k // BLOCK_SIZE)
    padded = np.zeros((blocks * BLOCK_SIZE, n), np.float32)
    padded[:k] = weight
    padded = padded.reshape(blocks, BLOCK_SIZE, n)
    # The largest magnitude, with its sign; on a tie between +m and -m, -m (onnxruntime keeps the
    # block's min and max and takes the max only when it is strictly larger).
    highest, lowest = padded.max(axis=1, keepdims=True), padded.min(axis=1, keepdims=True)
    extreme = np.where(np.abs(highest) > np.abs(lowest), highest, lowest)
    scale = (extreme / np.float32(-8.0)).astype(np.float32)
    # onnxruntime's rounding, to the bit: times the float32 reciprocal of the scale, plus 8.5,
    # truncated (half rounds up). Rounding half to even (np.rint of a division) differs on about
    # one weight in a million: on a 0.5B model, 5 per matrix, 0.022 on its logits.
    reciprocal = np.where(scale == 0, np.float32(0.0), np.float32(1.0) / np.where(scale == 0, np.float32(1.0), scale)).astype(np.float32)
    q = np.clip(np.floor(padded * reciprocal + np.float32(8.5)), 0, 15) - 8
    return (q * scale).astype(np.float32).reshape(blocks * BLOCK_SIZE, n)[:k]


def with_float_arithmetic(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """``model`` (an int4 graph, modified in place) computing in float32: each MatMulNBits' ``accuracy_level`` dropped."""
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return model


# --- graph helpers -------------------------------------------------------------------------------

def _gathered_transposes_to_tables(graph: Any) -> dict[str, str]:
    """``Gather(Transpose(W))`` where ``W`` is a MatMul's weight -> ``Gather(table)``, the table ``W``'s transpose; ``{table: W}``.

    onnxruntime-genai's builder ties a head to its embedding this way round: the head's (hidden,
    vocab) weight is stored and the embedding gathers rows of its transpose. Made a table, it is
    the tie :func:`prepare` knows (a gathered table whose transpose is the head's weight), which
    :func:`quantize` stores once; left as it was, the quantizer would quantise the head and keep
    the float weight for the embedding, which the fake-quantised reference quantises in both.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    consumers = readers_of(graph)
    made = {}
    for node in list(graph.node):
        weight = node.input[0] if node.op_type == "Transpose" else None
        if (weight not in inits or len(inits[weight].dims) != 2 or not is_float32(inits[weight])
                or list(node_attribute(node, "perm", [1, 0])) != [1, 0]):
            continue
        readers = consumers.get(node.output[0], [])
        if (readers and all(r.op_type == "Gather" and r.input[0] == node.output[0] and node_attribute(r, "axis", 0) == 0 for r in readers)
                and all(c is node or (c.op_type == "MatMul" and c.input[1] == weight) for c in consumers[weight])):
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[weight]).T.copy(), node.output[0]))
            graph.node.remove(node)
            made[node.output[0]] = weight
    return made


def _drop_repeated_initializers(graph: Any) -> None:
    """The quantizer adds a weight's quantised form once per MatMul that reads it (ALBERT's shared layers): keep one."""
    seen, kept = set(), []
    for tensor in graph.initializer:
        if tensor.name not in seen:
            seen.add(tensor.name)
            kept.append(tensor)
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
