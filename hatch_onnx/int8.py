"""The ``int8`` variant: onnxruntime's dynamic int8 quantisation, with a tied embedding table stored once.

==================  ===========================================================================
weights             onnxruntime's ``quantize_dynamic``: MatMul and Gemm weights per channel as
                    ``MatMulInteger`` (int8), Gather tables (the embeddings) per tensor (uint8).
                    Constant-weight Gemms are made MatMuls first, their weights transposed where
                    they are (:func:`hatch_onnx.graph_passes.gemms_to_matmuls`): the quantizer's
                    own conversion adds a transposed copy beside each weight
tied tables         a table read by a Gather and, transposed, by the LM head would be stored
                    twice: the Gather's uint8 table and the head's int8 transpose. The head's is
                    kept (per vocabulary entry: one scale per row of the table, finer than the
                    Gather's one scale for all) and the Gather reads its rows through a
                    ``Transpose``, which onnxruntime folds when a session opens: the file holds
                    the table once, as the other variants do
==================  ===========================================================================

Light at import: onnx, numpy and onnxruntime are imported by the functions that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_onnx.graph_passes import drop_unused_initializers, gemms_to_matmuls, head_transposes_to_initializers, node_attribute, save_model

if TYPE_CHECKING:  # pragma: no cover
    import onnx


def quantize(source: Path, target: Path, external: bool) -> None:
    """Write the int8 variant of the graph at ``source`` to ``target`` (external data ``<target name>.data`` when ``external``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    gemms_to_matmuls(model.graph, tied_tables=False)  # a tied head's Gemm is left to the quantizer: it is named below
    heads = _tied_heads(model.graph)
    quantize_dynamic(model, str(target), op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                     weight_type=QuantType.QInt8, per_channel=True, use_external_data_format=external)
    if heads:
        del model
        model = onnx.load(str(target))
        if any([_share(model.graph, head, table) for head, table in heads.items()]):  # a list: every head, not the first
            save_model(model, target, external)


def _tied_heads(graph: Any) -> dict[str, str]:
    """``{the name the quantizer gives a tied head's weight: the table}``, for heads that read a Gathered table transposed.

    A Gemm with ``transB`` over the table (:mod:`hatch_onnx.fused`): the quantizer makes it a
    MatMul over ``<table>_Transposed``. A MatMul over ``Transpose(table)`` (traced graphs): the
    transpose is made an initializer here, so that the quantizer quantises it as the head's weight.
    """
    inits = {t.name: t for t in graph.initializer}
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2}
    heads = {f"{n.input[1]}_Transposed": n.input[1] for n in graph.node
             if n.op_type == "Gemm" and n.input[1] in tables and node_attribute(n, "transB", 0)}
    heads.update({copy: table for table, copy in head_transposes_to_initializers(graph, tables).items()})
    return heads


def _share(graph: Any, head: str, table: str) -> bool:
    """Have the Gather of ``table`` read the head's int8 weight (``head``_quantized, (hidden, vocab)) transposed; whether it did.

    The quantizer's Gather path is ``DequantizeLinear(Gather(<table>_quantized, ids), scale,
    zero point)``; it becomes ``Cast(Gather(Transpose(<head>_quantized), ids)) *
    Gather(<head>_scale, ids)``: the head's weights are symmetric (zero points 0), one scale per
    vocabulary entry, so a row's scale is gathered with it.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    weight, scale, zero = (inits.get(f"{head}_{suffix}") for suffix in ("quantized", "scale", "zero_point"))
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == f"{table}_quantized"]
    if weight is None or scale is None or len(scale.dims) != 1 or not gathers:
        return False
    if zero is not None and np.any(numpy_helper.to_array(zero)):
        return False
    dequantize = {n.input[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    if any(g.output[0] not in dequantize for g in gathers):
        return False
    rows = f"{head}/rows"  # (vocab, hidden) int8: folded by onnxruntime when a session opens
    last = numpy_helper.from_array(np.array([-1], np.int64), f"{head}/last")
    graph.initializer.append(last)
    graph.node.insert(0, helper.make_node("Transpose", [weight.name], [rows], name=rows, perm=[1, 0]))
    for gather in gathers:
        old = dequantize[gather.output[0]]
        ids, out, name = gather.input[1], old.output[0], gather.name or gather.output[0]
        replacement = [
            helper.make_node("Gather", [rows, ids], [f"{name}/int8"], name=f"{name}/int8"),
            helper.make_node("Gather", [scale.name, ids], [f"{name}/scale"], name=f"{name}/scale"),
            helper.make_node("Cast", [f"{name}/int8"], [f"{name}/float"], name=f"{name}/float", to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", [f"{name}/scale", last.name], [f"{name}/scales"], name=f"{name}/scales"),
            helper.make_node("Mul", [f"{name}/float", f"{name}/scales"], [out], name=f"{name}/dequantized"),
        ]
        index = list(graph.node).index(gather)
        graph.node.remove(gather)
        graph.node.remove(old)
        for offset, node in enumerate(replacement):
            graph.node.insert(index + offset, node)
    drop_unused_initializers(graph)
    return True
