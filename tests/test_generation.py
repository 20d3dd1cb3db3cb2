"""Validation by generation (hatch_onnx.generation): with-past graphs decode what the model generates.

Each check exports a tiny fixture (a fraction of a second) and decodes 16 tokens at batch 2
through onnxruntime alone; the failures are made by giving the check a reference that
disagrees, as a graph that decodes otherwise than its model would. TensorFlow exports are
checked by the TF model in tests/test_tensorflow.py's matrix (gpt2, gptj).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import checkpoint
from hatch_onnx import generation
from hatch_onnx.errors import GenerationError, ValidationError
from hatch_onnx.exporting import ExportRequest, export_checkpoint
from hatch_onnx.models import REGISTRY
from hatch_onnx.package import _generation_figures
from hatch_onnx.validation import Tolerance


def _config(model_type: str, feature: str):
    import transformers

    model_config = transformers.AutoConfig.from_pretrained(checkpoint(model_type), local_files_only=True)
    return REGISTRY[model_type].config_for(feature)(model_config)


@pytest.mark.parametrize("model_type, feature, expected, keyed", [
    ("gpt2", "causal-lm-with-past", True, True), ("llama", "causal-lm-with-past", True, True),
    ("bart", "causal-lm-with-past", True, True),  # BART's decoder alone: a decoder-only graph
    ("gpt2", "default-with-past", True, True),  # hidden states: teacher-forced
    ("gpt2", "causal-lm", False, False), ("t5", "seq2seq-lm-with-past", False, False),
    ("t5", "default-with-past", False, True),  # an encoder-decoder's step: generation-checked through its graph set
])
def test_which_graphs_are_validated_by_generation(model_type, feature, expected, keyed):
    assert generation.applies(_config(model_type, feature)) is expected
    # the plan keys jobs by the feature name alone: every graph checked here must be keyed so
    assert generation.applies_to_feature(feature) is keyed


def test_prompts_are_left_padded_and_of_different_lengths():
    ids, mask = generation.prompts(_config("gpt2", "causal-lm-with-past"))
    assert ids.shape == (2, max(generation.PROMPT_LENGTHS)) and mask.sum(1).tolist() == list(generation.PROMPT_LENGTHS)
    assert mask[1, 0] == 0 and mask[:, -1].all()  # padding on the left


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    report = export_checkpoint(ExportRequest(model=checkpoint("gpt2"), feature="causal-lm-with-past"), folder, log=lambda line: None)
    return folder / "model.onnx", report


def test_the_report_carries_the_generation_figures(gpt2_export):
    _, report = gpt2_export
    figures = report["validation"]["generation"]
    assert figures["steps"] == generation.NEW_TOKENS and figures["tokens_equal"] is True
    assert figures["max_logits_diff"] <= report["atol"] and figures["batch"] == 2
    assert np.asarray(figures["tokens"]).shape == (2, generation.NEW_TOKENS)
    assert figures["distinct_tokens"] >= 8  # the fixture's greedy output varies: equality proves something
    assert "generate" in report["timings"]
    manifest = _generation_figures(figures)  # what the manifest carries: the figures, not the tokens
    assert "tokens" not in manifest and manifest["steps"] == generation.NEW_TOKENS
    json.dumps(figures)  # plain data


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_the_checked_tokens_are_what_generate_chooses(model_type, tmp_path):
    """The check's one pass over the graph's tokens stands for ``generate``: its tokens are greedy ``generate``'s, row by row."""
    import torch
    import transformers

    report = export_checkpoint(ExportRequest(model=checkpoint(model_type), feature="causal-lm-with-past"), tmp_path, log=lambda line: None)
    figures = report["validation"]["generation"]
    assert figures["tokens_equal"] and "tie" not in figures
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint(model_type), local_files_only=True).eval()
    config = _config(model_type, "causal-lm-with-past")
    ids, mask = generation.prompts(config)
    bare = transformers.GenerationConfig(max_new_tokens=generation.NEW_TOKENS, do_sample=False, num_beams=1,
                                         pad_token_id=generation.pad_token_id(config))
    model.generation_config = transformers.GenerationConfig()  # the checkpoint's own settings are generation policy
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), generation_config=bare)
    assert out[:, ids.shape[1]:].tolist() == figures["tokens"]


def _model():
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint("gpt2"), local_files_only=True, attn_implementation="eager").eval()


def test_a_token_the_model_would_not_choose_fails(gpt2_export, monkeypatch):
    from hatch_onnx.frameworks import pytorch

    real = pytorch.sequence_reference

    def prefers_another_token_at_step_5(model, config, inputs, output):
        values = real(model, config, inputs, output)
        position = generation.prompts(config)[0].shape[1] - 1 + 5
        wrong = int(np.argsort(values[1, position])[-2])  # the model's second choice, clearly behind its first
        values[1, position, wrong] = values[1, position].max() + 1.0
        return values

    monkeypatch.setattr(pytorch, "sequence_reference", prefers_another_token_at_step_5)
    graph, report = gpt2_export
    config = _config("gpt2", "causal-lm-with-past")
    with pytest.raises(GenerationError, match=r"step 5: logits differ") as caught:
        generation.validate_generation(graph, _model(), config, Tolerance(atol=report["atol"]))
    assert isinstance(caught.value, ValidationError) and caught.value.exit_code == 1
    assert caught.value.value["steps"] == 6 and caught.value.value["tokens_equal"] is False


def test_a_token_the_model_ranks_second_fails_though_the_logits_agree(gpt2_export, monkeypatch):
    """The check is the tokens, not only the logits: a graph that picks the model's second choice at
    a step where the model prefers its first by more than atol fails, with the logits within atol."""
    real_onnx = generation.generate_onnx

    def picks_the_second_choice_at_step_2(*args, **kwargs):
        tokens, logits = real_onnx(*args, **kwargs)
        second = int(np.argsort(logits[2, 0])[-2])
        tokens[0, 2] = second
        return tokens, logits

    monkeypatch.setattr(generation, "generate_onnx", picks_the_second_choice_at_step_2)
    graph, report = gpt2_export
    with pytest.raises(GenerationError, match=r"step 2, row 0: token \d+ from ONNX, \d+ from the model"):
        generation.validate_generation(graph, _model(), _config("gpt2", "causal-lm-with-past"), Tolerance(atol=report["atol"]))


def test_tokens_that_part_beyond_a_tie_pass_and_say_so(gpt2_export, monkeypatch):
    """Where the model ranks two tokens within atol, either is right: the check stops there and reports the tie."""
    from hatch_onnx.frameworks import pytorch

    real_reference, real_onnx = pytorch.sequence_reference, generation.generate_onnx
    second = {}

    def graph_takes_its_second_choice(*args, **kwargs):
        tokens, logits = real_onnx(*args, **kwargs)
        ours = int(tokens[0, 3])
        second["token"] = other = int(np.argsort(logits[3, 0])[-2])
        logits[3, 0, other] = logits[3, 0, ours] + 1e-6  # the graph prefers it, by less than the atol (1e-5)
        tokens[0, 3] = other
        return tokens, logits

    def model_nearly_ties(model, config, inputs, output):
        values = real_reference(model, config, inputs, output)
        position = generation.prompts(config)[0].shape[1] - 1 + 3
        ours = int(values[0, position].argmax())
        values[0, position, second["token"]] = values[0, position, ours] - 2e-6  # the model prefers its own, by less than atol
        return values

    monkeypatch.setattr(generation, "generate_onnx", graph_takes_its_second_choice)
    monkeypatch.setattr(pytorch, "sequence_reference", model_nearly_ties)
    graph, _ = gpt2_export
    figures = generation.validate_generation(graph, _model(), _config("gpt2", "causal-lm-with-past"), Tolerance(atol=1e-5))
    assert figures["tie"]["step"] == 3 and figures["steps"] == 4 and figures["tokens_equal"] is False and "failure" not in figures


def test_a_model_the_graph_does_not_compute_fails(gpt2_export):
    import torch

    model = _model()
    with torch.no_grad():
        model.lm_head.weight.mul_(1.001)  # tied to the embeddings: every step moves
    graph, report = gpt2_export
    with pytest.raises(GenerationError, match=r"generation: step 0: logits differ by"):
        generation.validate_generation(graph, model, _config("gpt2", "causal-lm-with-past"), Tolerance(atol=report["atol"]))


def test_a_lossy_variant_reports_without_failing(gpt2_export):
    """int8 and fp16 variants generate with ``enforce=False``: the figures say where they part, the build goes on."""
    import torch

    model = _model()
    with torch.no_grad():
        model.lm_head.weight.mul_(1.001)
    graph, report = gpt2_export
    figures = generation.validate_generation(graph, model, _config("gpt2", "causal-lm-with-past"), Tolerance(atol=report["atol"]),
                                             enforce=False)
    assert figures["tokens_equal"] is False and figures["failure"].startswith("generation: step 0")


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "bart"])
def test_decoders_generate_what_the_model_does(model_type, tmp_path):
    report = export_checkpoint(ExportRequest(model=checkpoint(model_type), feature="causal-lm-with-past", allow_new_head=model_type == "bart"),
                               tmp_path, log=lambda line: None)
    figures = report["validation"]["generation"]
    assert figures["tokens_equal"] and figures["steps"] == generation.NEW_TOKENS and figures["max_logits_diff"] <= report["atol"]


@pytest.fixture(scope="module")
def gpt2_hidden_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2-default")
    report = export_checkpoint(ExportRequest(model=checkpoint("gpt2"), feature="default-with-past"), folder, log=lambda line: None)
    return folder / "model.onnx", report


def _base_model():
    import transformers

    return transformers.AutoModel.from_pretrained(checkpoint("gpt2"), local_files_only=True).eval()


def test_a_graph_of_hidden_states_is_validated_teacher_forced(gpt2_hidden_export):
    _, report = gpt2_hidden_export
    figures = report["validation"]["generation"]
    assert figures["mode"] == "teacher-forced" and figures["tokens_equal"] is None
    assert figures["steps"] == generation.NEW_TOKENS and 0 < figures["max_diff"] <= report["atol"]
    # the manifest's figures are the report's
    assert _generation_figures(figures)["max_diff"] == figures["max_diff"]


def test_forced_tokens_are_seeded_and_not_special():
    config = _config("gpt2", "default-with-past")
    tokens = generation.forced_tokens(config)
    assert tokens.shape == (len(generation.PROMPT_LENGTHS), generation.NEW_TOKENS)
    assert (tokens == generation.forced_tokens(config)).all() and len(np.unique(tokens)) > 4


def test_hidden_states_the_model_does_not_compute_fail(gpt2_hidden_export):
    """A change of one layer's weights by 0.1% moves every step's state beyond atol: the check names the step."""
    import torch

    model = _base_model()
    with torch.no_grad():
        model.h[-1].mlp.c_proj.weight.mul_(1.001)
    graph, report = gpt2_hidden_export
    with pytest.raises(GenerationError, match=r"generation: step 0: last_hidden_state differs by"):
        generation.validate_generation(graph, model, _config("gpt2", "default-with-past"), Tolerance(atol=report["atol"]))
    # the unchanged model passes the same graph
    figures = generation.validate_generation(graph, _base_model(), _config("gpt2", "default-with-past"), Tolerance(atol=report["atol"]))
    assert "failure" not in figures


def test_a_cache_the_graph_mishandles_fails_after_the_first_step(gpt2_hidden_export):
    """Step 0 (the prompt, empty cache) agrees; a graph fed a wrong cache then parts: the check sees the loop, not one step."""
    graph, report = gpt2_hidden_export
    config = _config("gpt2", "default-with-past")
    original = generation.generate_onnx

    def stale_cache(session, config, input_ids, attention_mask, new_tokens, forced=None, output="logits"):
        # decode each step with a cache from one step earlier: what a graph that drops its newest entry does
        import numpy as np

        _, first = original(session, config, input_ids, attention_mask, 1, forced=forced, output=output)
        rest = [first[0]]
        for step in range(1, new_tokens):
            ids = np.concatenate([input_ids, forced[:, :step - 1]], axis=1) if step > 1 else input_ids
            mask = np.ones_like(ids)
            mask[:, : attention_mask.shape[1]] = attention_mask
            _, states = original(session, config, ids, mask, 2, forced=forced[:, step - 1:], output=output)
            rest.append(states[0])  # the state of the wrong position
        return np.asarray(forced), np.stack(rest)

    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as patch:
        patch.setattr(generation, "generate_onnx", stale_cache)
        with pytest.raises(GenerationError, match=r"generation: step 1: last_hidden_state differs"):
            generation.validate_generation(graph, _base_model(), config, Tolerance(atol=report["atol"]))


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["bloom", "gpt-neo", "llama", "qwen2", "phi3"])
def test_decoders_states_follow_the_model_step_by_step(model_type, tmp_path):
    report = export_checkpoint(ExportRequest(model=checkpoint(model_type), feature="default-with-past"), tmp_path, log=lambda line: None)
    figures = report["validation"]["generation"]
    assert figures["mode"] == "teacher-forced" and figures["steps"] == generation.NEW_TOKENS and figures["max_diff"] <= report["atol"]
