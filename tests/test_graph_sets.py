"""Encoder-decoder graph sets (hatch_onnx.graph_sets): four graphs, each validated, and the chain by generation."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import checkpoint
from hatch_onnx import generation, graph_sets
from hatch_onnx.errors import GenerationError

pytestmark = pytest.mark.slow  # four exports per family (about two seconds each on the tiny fixtures)

# One pair per kind of set: text LM (two families), speech LM, vision LM, hidden states (teacher-forced).
PAIRS = [("t5", "seq2seq-lm-with-past"), ("bart", "seq2seq-lm-with-past"), ("whisper", "speech2seq-lm-with-past"),
         ("vision-encoder-decoder", "vision2seq-lm-with-past"), ("t5", "default-with-past")]
ENCODER_INPUTS = {"t5": ["input_ids", "attention_mask"], "bart": ["input_ids", "attention_mask"], "whisper": ["input_features"],
                  "vision-encoder-decoder": ["pixel_values"]}


def _load(model_type: str, feature: str):
    from hatch_onnx.loading import load_model
    from hatch_onnx.models import support_for

    model, _ = load_model(feature, str(checkpoint(model_type)), "pt")
    return model, support_for(model_type).config_for(feature)(model.config)


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{m}:{f}" for m, f in PAIRS])
def exported(request, tmp_path_factory):
    model_type, feature = request.param
    model, config = _load(model_type, feature)
    folder = tmp_path_factory.mktemp(model_type)
    graph_sets.export_set(model, config, 14, folder)
    return model_type, folder, model, config


def test_every_pair_with_a_kind_is_a_registered_feature():
    from hatch_onnx.models import support_for, tf_features, tf_model_types

    for model_type, feature in graph_sets.KINDS:
        assert feature in support_for(model_type).features
        assert graph_sets.applies(model_type, feature, "pt")
        # TensorFlow's sets: the text families' and Whisper's, each a feature the TF registry exports; the
        # vision-encoder-decoder's TF class has no feature with past
        from_tf = graph_sets.applies(model_type, feature, "tf")
        assert from_tf is (model_type in graph_sets.TEXT_FAMILIES | {"whisper"}), (model_type, feature)
        if from_tf and model_type in tf_model_types():
            assert feature in tf_features(model_type)
    assert graph_sets.applies("whisper", "speech2seq-lm-with-past", "tf") and graph_sets.applies("whisper", "default-with-past", "tf")
    assert not graph_sets.applies("vision-encoder-decoder", "vision2seq-lm-with-past", "tf")
    assert not graph_sets.applies("whisper", "speech2seq-lm", "tf")  # no past: the one graph


def test_the_set_has_the_names_and_inputs_consumers_expect(exported):
    import onnx

    model_type, folder, _, config = exported
    kind = graph_sets.kind_of(config)
    assert sorted(p.name for p in folder.iterdir()) == sorted(graph_sets.GRAPHS)
    graphs = {name: onnx.load(str(folder / name), load_external_data=False).graph for name in graph_sets.GRAPHS}
    inputs = {name: [i.name for i in graph.input] for name, graph in graphs.items()}
    mask = ["encoder_attention_mask"] if model_type in ("t5", "bart") else []  # Whisper's and images' encoders: no padding
    assert kind.encoder_mask == bool(mask)
    assert inputs[graph_sets.ENCODER] == ENCODER_INPUTS[model_type]
    assert [o.name for o in graphs[graph_sets.ENCODER].output] == ["last_hidden_state"]
    assert inputs[graph_sets.DECODER] == [*mask, "input_ids", "encoder_hidden_states"]
    if model_type == "vision-encoder-decoder":
        # GPT-2's cache named as a decoder-only model's; cross-attention recomputed from encoder_hidden_states every step
        past = [f"past_key_values.{i}.{k}" for i in range(config.num_layers) for k in ("key", "value")]
        assert inputs[graph_sets.DECODER_WITH_PAST] == ["input_ids", "encoder_hidden_states", *past]
    else:
        past = [f"past_key_values.{i}.{p}.{k}" for i in range(config.num_layers) for p in ("decoder", "encoder") for k in ("key", "value")]
        assert inputs[graph_sets.DECODER_WITH_PAST] == [*mask, "input_ids", *past]
    assert graph_sets.cache_names(config, "inputs") == past
    head = "last_hidden_state" if kind.chain == "teacher-forced" else "logits"
    assert [o.name for o in graphs[graph_sets.DECODER].output] == [head, *graph_sets.cache_names(config, "outputs")]
    merged = graphs[graph_sets.DECODER_MERGED]
    assert inputs[graph_sets.DECODER_MERGED][-1] == "use_cache_branch"
    assert [o.name for o in merged.output] == [head, *graph_sets.cache_names(config, "outputs")]
    assert [n.op_type for n in merged.node] == ["If"]
    # the two decoders share their weights: the merged graph holds each once
    names = [t.name for t in merged.initializer]
    assert len(names) == len(set(names))
    sizes = {name: (folder / name).stat().st_size for name in graph_sets.GRAPHS}
    assert sizes[graph_sets.DECODER_MERGED] < sizes[graph_sets.DECODER] + sizes[graph_sets.DECODER_WITH_PAST]


def test_each_graph_and_the_chain_are_validated(exported):
    model_type, folder, model, config = exported
    report = graph_sets.validate_set(folder, model, config, config.atol_for_validation)
    assert set(report["graphs"]) == set(graph_sets.GRAPHS)
    assert all(figures["max_abs_diff"] <= config.atol_for_validation for figures in report["graphs"].values())
    figures = report["generation"]
    assert figures["steps"] == generation.NEW_TOKENS and figures["batch"] == 2
    if graph_sets.kind_of(config).chain == "teacher-forced":
        assert figures["tokens_equal"] is None and "n/a" in figures["tokens_compared"]
        assert 0 < figures["max_diff"] <= config.atol_for_validation
        return
    assert figures["tokens_equal"] and figures["distinct_tokens"] >= 4  # the fixtures' greedy output varies
    if model_type in ("whisper", "vision-encoder-decoder"):  # the encoder's input decides: the two rows decode differently
        assert figures["tokens"][0] != figures["tokens"][1]
        assert figures["mode"] == "greedy-loop" and figures["reference"] == "one PyTorch pass over the chosen tokens, no cache"


def test_a_chain_that_decodes_otherwise_fails(exported):
    """The model moved a little after the export: the chain check sees it (tokens, logits or hidden states)."""
    import torch

    _, folder, model, config = exported
    from hatch_onnx.validation import Tolerance

    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        with torch.no_grad():
            next(p for name, p in model.named_parameters() if "decoder" in name and p.dim() == 2).mul_(1.05)
        with pytest.raises(GenerationError, match="generation|teacher-forced"):
            graph_sets.validate_chain(folder, model, config, Tolerance(atol=config.atol_for_validation))
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(original[name])


def test_merged_graph_branches_agree_with_the_separate_decoders(exported):
    """The merged graph's two branches give what decoder_model and decoder_with_past_model give."""
    from hatch_onnx.validation import open_session

    _, folder, _, config = exported
    head = graph_sets.kind_of(config).head
    merged = open_session(folder / graph_sets.DECODER_MERGED)
    for source, use_cache in ((graph_sets.DECODER, False), (graph_sets.DECODER_WITH_PAST, True)):
        feed = graph_sets.dummy_inputs(config, source, graph_sets.VALIDATION_SHAPES, 5)
        alone = open_session(folder / source).run([head], feed)[0]
        together = merged.run([head], graph_sets.merged_feed(config, feed, use_cache))[0]
        np.testing.assert_array_equal(alone, together)


def test_merge_renames_inside_control_flow_bodies(tmp_path):
    """tf2onnx's decoders hold If nodes whose branches read the enclosing graph's values (BART's causal mask):
    the merged graph renames those reads with the values, and each branch still computes its own decoder."""
    import onnx
    from onnx import TensorProto, helper

    from hatch_onnx.validation import open_session

    def decoder(path, op):  # logits = op(x) if x has more than one element else |op(x)|, through an If
        then_branch = helper.make_graph([helper.make_node("Identity", ["t"], ["kept"], name="keep")], "then", [],
                                        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, None)])
        else_branch = helper.make_graph([helper.make_node("Abs", ["t"], ["absolute"], name="abs")], "else", [],
                                        [helper.make_tensor_value_info("absolute", TensorProto.FLOAT, None)])
        nodes = [helper.make_node(op, ["x"], ["t"], name="op"), helper.make_node("Size", ["x"], ["size"], name="size"),
                 helper.make_node("Greater", ["size", "one"], ["long"], name="greater"),
                 helper.make_node("If", ["long"], ["logits"], name="if", then_branch=then_branch, else_branch=else_branch)]
        graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n"])],
                                  initializer=[helper.make_tensor("one", TensorProto.INT64, [], [1])])
        onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))

    decoder(tmp_path / "first.onnx", "Neg")
    decoder(tmp_path / "past.onnx", "Sin")
    graph_sets.merge_decoders(tmp_path / "first.onnx", tmp_path / "past.onnx", tmp_path / "merged.onnx")
    merged = open_session(tmp_path / "merged.onnx")
    for x in (np.array([0.5, -2.0, 1.0], dtype=np.float32), np.array([0.7], dtype=np.float32)):
        for alone, use_cache in (("first.onnx", False), ("past.onnx", True)):
            expected = open_session(tmp_path / alone).run(["logits"], {"x": x})[0]
            got = merged.run(["logits"], {"x": x, graph_sets.USE_CACHE_BRANCH: np.array([use_cache])})[0]
            np.testing.assert_array_equal(got, expected)
