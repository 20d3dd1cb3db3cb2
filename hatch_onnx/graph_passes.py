"""Passes over ONNX graphs that depend on no framework: folding, canonical naming, op checks.

The TensorFlow path needs them (tf2onnx leaves constant ``If`` nodes, names everything from
process-wide counters and lets unconverted ops through), but each pass reads and writes ONNX
protos only, so they live here, are tested on their own on both transformers lines, and are
there for any exporter that needs a graph made deterministic or checked before it ships.
Light at import: onnx and onnxruntime are imported by the functions that use them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatch_onnx.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

def fold_constant_ifs(graph: Any, outer: "Mapping[str, Any] | None" = None) -> None:
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
            fold_constant_ifs(body, constants)
        producers.update((name, node) for name in node.output if name)
        index += 1


def standard_ranges(proto: Any, opset: int) -> None:
    """tf2onnx converts a ``tf.range`` inside a while loop's body (TF CLIP's and GroupViT's) to
    ``com.microsoft`` Range without importing that domain, and the ONNX checker refuses the
    graph. ONNX has had the same op since opset 11."""
    if opset < 11:
        return
    for node in all_nodes(proto.graph):
        if node.domain == "com.microsoft" and node.op_type == "Range":
            node.domain = ""


# --- naming ----------------------------------------------------------------------------------


def name_graph(proto: "onnx.ModelProto", axes: Mapping[str, Mapping[int, str]], input_names: Sequence[str],
               output_names: Sequence[str]) -> None:
    """Give the graph the config's names and dynamic axes (``axes``: name -> axis -> axis name), and a form that depends on its structure alone.

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
    return tuple(sorted(n.op_type for body in _bodies(node) for n in all_nodes(body)))


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


def check_ops_supported(proto: "onnx.ModelProto", producer: str = "tf2onnx") -> None:
    """Raise naming every op of the graph that onnxruntime has no definition of.

    tf2onnx leaves a TF op it cannot convert in the graph as is (``Erfc`` in domain ""), logs
    it and carries on; such a graph would be written and only fail when loaded.
    """
    known = _onnxruntime_ops()
    unknown = Counter(
        node.op_type for node in all_nodes(proto.graph) if ("" if node.domain == "ai.onnx" else node.domain, node.op_type) not in known
    )
    if unknown:
        ops = ", ".join(f"{op} (x{count})" if count > 1 else op for op, count in sorted(unknown.items()))
        raise ExportError(f"{producer} left TensorFlow ops onnxruntime cannot run: {ops}; no graph was written")


def all_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for body in _bodies(node):
            yield from all_nodes(body)


_ORT_MISSING_KERNEL = re.compile(r"implementation for (\w+)\(")


def check_loads(path: Path, producer: str = "tf2onnx") -> None:
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
        raise ExportError(f"{producer} produced {what} ({message})") from exc


def tie_transposed_copies(graph: Any) -> list[str]:
    """Store once what an optimiser stored twice: an initializer equal to another's transpose
    becomes a ``Transpose`` of that other one; the names of the copies dropped.

    A language model whose head shares the embedding's weights is exported with one table, read
    by ``Gather`` and, through a ``Transpose``, by the head's ``MatMul``. onnxruntime's offline
    optimisations fold that ``Transpose`` into a second table: a variant of Qwen2.5-0.5B was
    0.54 GB larger than its export. Restored, onnxruntime folds it again in memory when a
    session opens (the graph runs as fast), and the file holds the table once.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    # The table is what a Gather reads (the embedding); a copy is any other initializer of the
    # transposed shape and the same values. Without a Gather there is no telling which is which.
    tables = {node.input[0] for node in graph.node if node.op_type == "Gather"}
    by_shape: dict[tuple, list] = {}
    for tensor in graph.initializer:
        if len(tensor.dims) == 2 and tensor.dims[0] != tensor.dims[1]:
            by_shape.setdefault((tuple(tensor.dims), tensor.data_type), []).append(tensor)
    copies: dict[str, str] = {}  # copy -> the table it is the transpose of
    for (dims, dtype), originals in by_shape.items():
        for original in (t for t in originals if t.name in tables):
            table = numpy_helper.to_array(original)
            for copy in by_shape.get((dims[::-1], dtype), []):
                if copy.name not in tables and copy.name not in copies and np.array_equal(numpy_helper.to_array(copy), table.T):
                    copies[copy.name] = original.name
    if not copies:
        return []
    drop_initializers(graph, set(copies))
    for index, (copy, original) in enumerate(sorted(copies.items())):
        graph.node.insert(index, helper.make_node("Transpose", [original], [copy], name=f"{copy}/tied", perm=[1, 0]))
    return sorted(copies)


def gemms_to_matmuls(graph: Any, tied_tables: bool = True) -> None:
    """``Gemm(A, B, C)`` with a constant 2-D float B, ``transA`` 0 and ``alpha`` 1 -> ``MatMul(A, B') [+ Add(C')]``.

    ``B'`` is B, or with ``transB`` its transpose: in place when this Gemm alone reads B, else a new
    initializer, or, when a Gather reads B (an embedding table the head shares), a ``Transpose``
    node, which :func:`hatch_onnx.int4.prepare` then ties; without ``tied_tables`` such a Gemm
    stays as it is (a Transpose of the table would be folded into a second one).

    onnxruntime's quantizers take MatMul weights, not Gemm's: GPT-2's Conv1D exports as Gemm, and
    :mod:`hatch_onnx.fused` writes every projection as one ((out, in), ``transB``).
    """
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.domain in ("", "ai.onnx")}
    readers = readers_of(graph)
    transposed: set[str] = set()  # the Transpose nodes made for gathered tables, by output
    for node in list(graph.node):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        if len(weight.dims) != 2 or not is_float32(weight) or node_attribute(node, "transA", 0) or node_attribute(node, "alpha", 1.0) != 1.0:
            continue
        b = node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        beta = float(node_attribute(node, "beta", 1.0))
        if (b in gathered and not tied_tables) or (bias is not None and beta != 1.0 and bias not in inits):
            continue  # a tied table kept, or a computed bias scaled by beta: left as it is
        if node_attribute(node, "transB", 0) and len(readers[b]) == 1 and b not in gathered:
            # this Gemm's weight alone (every projection of hatch_onnx.fused's graphs): transposed
            # where it is, so that a graph's weights are not all held twice on the way
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), b))
        elif node_attribute(node, "transB", 0):
            b = f"{node.input[1]}/transposed"
            if node.input[1] in gathered and b not in transposed:  # a tied head (hatch_onnx.fused): the Transpose prepare ties
                graph.node.insert(list(graph.node).index(node), helper.make_node("Transpose", [node.input[1]], [b], name=b, perm=[1, 0]))
                transposed.add(b)
            elif node.input[1] not in gathered and b not in inits:
                inits[b] = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), b)
                graph.initializer.append(inits[b])
        if bias is not None and beta != 1.0:
            scaled = f"{bias}/beta"
            graph.initializer.append(numpy_helper.from_array((numpy_helper.to_array(inits[bias]) * np.float32(beta)), scaled))
            bias = scaled
        product = f"{node.output[0]}/matmul" if bias else node.output[0]
        nodes = [helper.make_node("MatMul", [node.input[0], b], [product], name=f"{node.name}/MatMul")]
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}/Add"))
        index = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(nodes):
            graph.node.insert(index + offset, new)
    drop_unused_initializers(graph)


def head_transposes_to_initializers(graph: Any, tables: "set[str]") -> dict[str, str]:
    """``Transpose(table)`` read only as MatMul weights (a tied LM head) -> an initializer, the table's
    transpose under the Transpose's output name; ``{table: that name}``.

    onnxruntime's quantizers quantise a MatMul's weight only when it is an initializer: made one,
    the head's weight is quantised, and the quantiser's caller can then store the table once
    (:mod:`hatch_onnx.int4`, :mod:`hatch_onnx.int8`).
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    readers = readers_of(graph)
    made = {}
    for node in list(graph.node):
        if (node.op_type == "Transpose" and node.input[0] in tables and list(node_attribute(node, "perm", [1, 0])) == [1, 0]
                and readers.get(node.output[0]) and all(r.op_type == "MatMul" and r.input[1] == node.output[0] for r in readers[node.output[0]])):
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]).T.copy(), node.output[0]))
            graph.node.remove(node)
            made[node.input[0]] = node.output[0]
    return made


def readers_of(graph: Any) -> dict[str, list[Any]]:
    """``{tensor name: the nodes of graph (not its subgraphs) that read it}``."""
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def node_attribute(node: Any, name: str, default: Any) -> Any:
    """``node``'s attribute ``name`` as a Python value, or ``default``."""
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def is_float32(tensor: Any) -> bool:
    """Whether an initializer holds float32."""
    from onnx import TensorProto

    return tensor.data_type == TensorProto.FLOAT


def drop_unused_initializers(graph: Any) -> None:
    """Remove the initializers no node (subgraphs included) reads and no output names."""
    used = {name for node in all_nodes(graph) for name in node.input} | {o.name for o in graph.output}
    drop_initializers(graph, {t.name for t in graph.initializer if t.name not in used})


def save_model(model: "onnx.ModelProto", target: Path, external: bool) -> None:
    """Write ``model`` to ``target``; with ``external``, its tensors of 1 KiB and more to ``<target name>.data``."""
    import onnx

    if external:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{target.name}.data", size_threshold=1024)
    else:
        onnx.save_model(model, str(target))


def drop_initializers(graph: Any, names: "set[str]") -> None:
    """Remove the initializers ``names`` from ``graph`` (and from its inputs: IR < 4 lists initializers there too)."""
    kept = [t for t in graph.initializer if t.name not in names]
    if len(kept) == len(graph.initializer):
        return
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
