"""The framework-free ONNX passes, on graphs built here: no TensorFlow, so both transformers lines run them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from hatch_onnx import graph_passes
from hatch_onnx.errors import ExportError


def _run(model: onnx.ModelProto, feed: dict) -> list:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _scaled(order: list[int], names: tuple[str, ...]) -> onnx.ModelProto:
    """x * 2 + 3 through two Mul/Add chains that compute the same thing, nodes in ``order``, named ``names``."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), names[0])
    three = numpy_helper.from_array(np.array(3.0, dtype=np.float32), names[1])
    two_again = numpy_helper.from_array(np.array(2.0, dtype=np.float32), names[2])  # same content, another name
    nodes = [
        helper.make_node("Mul", ["x", names[0]], [f"{names[3]}_m1"], name=f"{names[3]}_a"),
        helper.make_node("Mul", ["x", names[2]], [f"{names[3]}_m2"], name=f"{names[3]}_b"),
        helper.make_node("Add", [f"{names[3]}_m1", f"{names[3]}_m2"], ["sum"], name=f"{names[3]}_c"),
        helper.make_node("Add", ["sum", names[1]], ["raw_out"], name=f"{names[3]}_d"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["unk__1", 3])
    y = helper.make_tensor_value_info("raw_out", TensorProto.FLOAT, ["unk__2", 3])
    return _model([nodes[i] for i in order], [x], [y], [two, three, two_again])


def test_name_graph_gives_the_same_bytes_whatever_the_names_and_order():
    first, second = _scaled([0, 1, 2, 3], ("c1", "c2", "c3", "n")), _scaled([1, 0, 2, 3], ("k9", "k8", "k7", "other"))
    axes = {"x": {0: "batch"}, "y": {0: "batch"}}
    for model in (first, second):
        graph_passes.name_graph(model, axes, ["x"], ["y"])
    assert first.SerializeToString() == second.SerializeToString()
    graph = first.graph
    assert [v.name for v in graph.input] == ["x"] and [v.name for v in graph.output] == ["y"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # the two Mul by 2 are one node now, and the two equal constants one initializer
    assert [n.op_type for n in graph.node] == ["Mul", "Add", "Add"] and len(graph.initializer) == 2
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(_run(first, {"x": x})[0], x * 4 + 3)


def test_name_graph_refuses_a_changed_signature():
    model = _scaled([0, 1, 2, 3], ("a", "b", "c", "n"))
    with pytest.raises(ExportError, match="changed the signature"):
        graph_passes.name_graph(model, {}, ["x", "mask"], ["y"])


def test_fold_constant_ifs_inlines_the_branch_taken():
    one = numpy_helper.from_array(np.array([1], dtype=np.int64), "one")
    then_out = helper.make_tensor_value_info("then_y", TensorProto.FLOAT, None)
    else_out = helper.make_tensor_value_info("else_y", TensorProto.FLOAT, None)
    then_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["then_y"])], "then", [], [then_out])
    else_branch = helper.make_graph([helper.make_node("Abs", ["x"], ["else_y"])], "else", [], [else_out])
    nodes = [
        helper.make_node("Equal", ["one", "one"], ["same"]),
        helper.make_node("Not", ["same"], ["different"]),  # always False once traced: tf2onnx leaves it
        helper.make_node("If", ["different"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    model = _model(nodes, [x], [y], [one])
    graph_passes.fold_constant_ifs(model.graph)
    assert "If" not in [n.op_type for n in model.graph.node] and "Abs" in [n.op_type for n in model.graph.node]
    values = np.array([-1.0, 2.0, -3.0], dtype=np.float32)
    np.testing.assert_array_equal(_run(model, {"x": values})[0], np.abs(values))


def test_fold_constant_ifs_leaves_a_real_condition_alone():
    then_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Abs", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])]
    model = _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    graph_passes.fold_constant_ifs(model.graph)
    assert [n.op_type for n in model.graph.node] == ["If"]


def test_standard_ranges_moves_contrib_range_to_the_onnx_domain():
    start, limit, delta = (numpy_helper.from_array(np.array(v, dtype=np.int64), n) for v, n in ((0, "s"), (4, "l"), (1, "d")))
    node = helper.make_node("Range", ["s", "l", "d"], ["r"], domain="com.microsoft")
    model = _model([node], [], [helper.make_tensor_value_info("r", TensorProto.INT64, [4])], [start, limit, delta])
    graph_passes.standard_ranges(model, 17)
    assert model.graph.node[0].domain == ""
    np.testing.assert_array_equal(_run(model, {})[0], np.arange(4))


def test_ops_onnxruntime_lacks_are_named_before_anything_is_written():
    nodes = [helper.make_node("Erfc", ["x"], ["y"]), helper.make_node("Erfc", ["y"], ["z"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    with pytest.raises(ExportError, match=r"Erfc \(x2\); no graph was written"):
        graph_passes.check_ops_supported(model)
    graph_passes.check_ops_supported(_scaled([0, 1, 2, 3], ("a", "b", "c", "n")))  # every op known: no error


def test_a_graph_onnxruntime_cannot_load_is_an_export_error(tmp_path):
    # Abs has no kernel for strings: the graph is valid ONNX, onnxruntime refuses it
    model = _model([helper.make_node("Abs", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.STRING, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.STRING, [2])])
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ExportError, match="onnxruntime cannot"):
        graph_passes.check_loads(path, producer="a test")


def test_a_folded_transpose_of_a_tied_table_is_stored_once():
    """An optimiser's folded copy of the embedding (the tied LM head's weight) becomes a Transpose
    of it again: one table in the file, the same outputs; a table that only looks alike stays."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from hatch_onnx.graph_passes import tie_transposed_copies

    rng = np.random.default_rng(0)
    table = rng.standard_normal((6, 4)).astype(np.float32)
    other = rng.standard_normal((4, 6)).astype(np.float32)  # same shape as the copy, other values
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["hidden"]),
         helper.make_node("MatMul", ["hidden", "copy"], ["logits"]),
         helper.make_node("MatMul", ["hidden", "other"], ["more"])],
        "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 6]), helper.make_tensor_value_info("more", TensorProto.FLOAT, [2, 6])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.ascontiguousarray(table.T), "copy"),
         numpy_helper.from_array(other, "other")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def run(proto):
        session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"ids": np.array([1, 4])})

    before = run(model)
    assert tie_transposed_copies(model.graph) == ["copy"]
    onnx.checker.check_model(model)
    assert sorted(t.name for t in model.graph.initializer) == ["other", "table"]
    assert model.graph.node[0].op_type == "Transpose" and list(model.graph.node[0].output) == ["copy"]
    for got, expected in zip(run(model), before):
        np.testing.assert_array_equal(got, expected)
    assert tie_transposed_copies(model.graph) == []  # nothing left to tie


@pytest.mark.parametrize("tied_tables", [True, False])
def test_gemms_become_matmuls_their_weights_transposed_in_place_unless_shared(tied_tables):
    """A weight only its Gemm reads is transposed where it is; one another node reads gets a transposed copy;
    a table a Gather reads is a Transpose for int4 to tie, or (``tied_tables=False``) its Gemm stays."""
    rng = np.random.default_rng(0)
    own, shared, table = (rng.standard_normal(shape).astype(np.float32) for shape in ((5, 4), (4, 4), (7, 4)))
    bias = rng.standard_normal(5).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "own", "bias"], ["a"], name="own", transB=1),  # (x @ own.T + bias): (2, 5)
        helper.make_node("Gemm", ["x", "shared"], ["b"], name="shared", transB=1),
        helper.make_node("Gemm", ["x", "shared"], ["c"], name="shared_again"),  # reads it untransposed
        helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed"),
        helper.make_node("Gemm", ["x", "table"], ["logits"], name="head", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]), helper.make_tensor_value_info("ids", TensorProto.INT64, [3])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b", "c", "rows", "logits")]
    model = _model(nodes, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in
                                            (("own", own), ("shared", shared), ("table", table), ("bias", bias))])
    feed = {"x": rng.standard_normal((2, 4)).astype(np.float32), "ids": np.array([0, 6, 2])}
    expected = _run(model, feed)
    graph_passes.gemms_to_matmuls(model.graph, tied_tables=tied_tables)
    for got, want in zip(_run(model, feed), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(inits["own"], own.T)  # in place, under its name: no second copy
    assert np.array_equal(inits["shared"], shared) and np.array_equal(inits["shared/transposed"], shared.T)
    ops = [(n.op_type, list(n.input)) for n in model.graph.node]
    assert ("MatMul", ["x", "own"]) in ops and any(op == "Add" and inputs[1] == "bias" for op, inputs in ops)
    assert "table/transposed" not in inits and "Gemm" not in {op for op, inputs in ops if inputs[1:2] != ["table"]}
    assert ("Gemm", ["x", "table"]) in ops if not tied_tables else ("Transpose", ["table"]) in ops
