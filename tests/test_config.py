"""OnnxConfig family: axes, dummy inputs (with and without a preprocessor), past key values."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

from conftest import checkpoint
from hatch_onnx import FeaturesManager, OnnxConfig
from hatch_onnx.errors import CheckpointError, FrameworkError


def config_for(model_type: str, feature: str):
    model_config = transformers.AutoConfig.from_pretrained(checkpoint(model_type), local_files_only=True)
    return FeaturesManager.get_config(model_type, feature)(model_config)


def test_text_dummy_inputs_from_config_alone():
    cfg = config_for("bert", "sequence-classification")
    inputs = cfg.generate_dummy_inputs(None)
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert inputs["input_ids"].shape == (2, 8)  # -1 -> the fixed default, never 1
    assert inputs["input_ids"].max() < cfg._config.vocab_size
    again = cfg.generate_dummy_inputs(None)
    assert np.array_equal(inputs["input_ids"], again["input_ids"])  # seeded
    sized = cfg.generate_dummy_inputs(None, batch_size=3, seq_length=5, framework="pt")
    assert tuple(sized["input_ids"].shape) == (3, 5) and type(sized["input_ids"]).__module__.startswith("torch")


def test_text_dummy_inputs_from_tokenizer():
    cfg = config_for("bert", "default")
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint("bert"), local_files_only=True)
    inputs = cfg.generate_dummy_inputs(tokenizer, seq_length=6)
    assert inputs["input_ids"].shape == (2, 6)
    assert inputs["input_ids"][0, 0] == tokenizer.cls_token_id
    assert list(cfg.generate_dummy_inputs(tokenizer=tokenizer)) == list(cfg.inputs)


def test_multiple_choice_axes_and_shapes():
    cfg = config_for("roberta", "multiple-choice")
    assert cfg.inputs["input_ids"] == {0: "batch", 1: "choice", 2: "sequence"}
    assert "token_type_ids" not in cfg.inputs
    assert cfg.generate_dummy_inputs(None, num_choices=3)["input_ids"].shape == (2, 3, 8)


def test_vision_and_audio_dummy_inputs():
    vit = config_for("vit", "image-classification")
    processor = transformers.AutoImageProcessor.from_pretrained(checkpoint("vit"), local_files_only=True)
    assert vit.generate_dummy_inputs(processor)["pixel_values"].shape == (2, 3, 32, 32)
    assert vit.generate_dummy_inputs(None)["pixel_values"].shape == (2, 3, 32, 32)
    whisper = config_for("whisper", "speech2seq-lm")
    assert whisper.generate_dummy_inputs(None)["input_features"].shape == (2, 16, 64)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(checkpoint("whisper"), local_files_only=True)
    assert whisper.generate_dummy_inputs(extractor, time_duration=1.0)["input_features"].shape == (2, 16, 64)
    # A decoding step takes the encoder's output from the cache, not the audio.
    step = config_for("whisper", "speech2seq-lm-with-past").generate_dummy_inputs(None)
    assert "input_features" not in step
    assert step["past_key_values.0.encoder.key"].shape == (2, 4, 32, 8)


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_seq2seq_decoding_step_takes_no_encoder_ids(model_type):
    """The with-past graph is the decoder's: the encoder mask for cross-attention, never its ids."""
    step = config_for(model_type, "seq2seq-lm-with-past")
    assert list(step.inputs)[:3] == ["attention_mask", "decoder_input_ids", "decoder_attention_mask"]
    assert list(step.generate_dummy_inputs(None)) == list(step.inputs)
    assert "input_ids" in config_for(model_type, "seq2seq-lm").inputs


def test_past_key_values_layout():
    cfg = config_for("gpt2", "causal-lm-with-past")
    assert cfg.use_past and cfg.num_layers == 2 and cfg.num_attention_heads == 4
    assert list(cfg.inputs)[:3] == ["input_ids", "past_key_values.0.key", "past_key_values.0.value"]
    assert cfg.inputs["attention_mask"] == {0: "batch", 1: "past_sequence + sequence"}
    assert cfg.outputs["present.1.value"] == {0: "batch", 2: "past_sequence + sequence"}
    inverted: dict = {}
    cfg.fill_with_past_key_values_(inverted, "inputs", inverted_values_shape=True)
    assert inverted["past_key_values.0.value"] == {0: "batch", 1: "past_sequence"}
    with pytest.raises(ValueError):
        cfg.fill_with_past_key_values_({}, "sideways")
    inputs = cfg.generate_dummy_inputs(None)
    assert inputs["past_key_values.0.key"].shape == (2, 4, cfg.PAST_SEQUENCE, 8)
    assert inputs["attention_mask"].shape == (2, cfg.PAST_SEQUENCE + 8)
    assert cfg.values_override == {"use_cache": True}
    assert config_for("gpt2", "causal-lm").values_override == {"use_cache": False}


def test_seq2seq_past_layout():
    cfg = config_for("t5", "seq2seq-lm-with-past")
    assert cfg.outputs["logits"] == {0: "batch", 1: "decoder_sequence"}
    assert cfg.inputs["past_key_values.1.encoder.value"] == {0: "batch", 2: "encoder_sequence"}
    assert cfg.outputs["present.0.decoder.key"] == {0: "batch", 2: "past_decoder_sequence + sequence"}


def test_flatten_and_external_data(monkeypatch):
    flat = OnnxConfig.flatten_output_collection_property("present", [("k0", "v0"), ("k1", "v1")])
    assert flat == {"present.0": "k0", "present.1": "v0", "present.2": "k1", "present.3": "v1"}
    assert not OnnxConfig.use_external_data_format(1000)
    assert OnnxConfig.use_external_data_format(600_000_000)  # 2.4 GB of float32


def test_unsupported_task_raises():
    model_config = transformers.AutoConfig.from_pretrained(checkpoint("bert"), local_files_only=True)
    with pytest.raises(ValueError, match="not a supported task"):
        OnnxConfig(model_config, task="telepathy")


def test_determine_framework(tmp_path):
    assert FeaturesManager.determine_framework(str(checkpoint("bert"))) == "pt"  # safetensors only
    assert FeaturesManager.determine_framework(str(checkpoint("bert")), "pt") == "pt"
    with pytest.raises(FrameworkError, match="tf_model.h5"):
        FeaturesManager.determine_framework(str(checkpoint("bert")), "tf")
    (tmp_path / "tf_model.h5").write_bytes(b"")
    assert FeaturesManager.determine_framework(str(tmp_path)) == "tf"
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert FeaturesManager.determine_framework(str(tmp_path)) == "pt"  # both: PyTorch
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError):
        FeaturesManager.determine_framework(str(empty))
    assert FeaturesManager.determine_framework("not-a-local-dir") == "pt"  # installed, PyTorch first


def test_get_model_from_feature_is_local():
    model = FeaturesManager.get_model_from_feature("causal-lm", str(checkpoint("gpt2")))
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert FeaturesManager.get_model_class_for_feature("seq2seq-lm-with-past").__name__ == "AutoModelForSeq2SeqLM"
    with pytest.raises(CheckpointError):
        FeaturesManager.get_model_from_feature("default", "someone/not-on-this-disk")


@pytest.mark.parametrize("model_type, feature", [("llama", "causal-lm-with-past"), ("t5", "seq2seq-lm-with-past"), ("clip", "default")])
def test_a_draw_leaves_the_config_as_it_was(model_type, feature):
    """Per-call parameters (seed, past length, padding) travel in a DummySpec: the config never changes."""
    from concurrent.futures import ThreadPoolExecutor

    from hatch_onnx.config import DummySpec
    from hatch_onnx.validation import validation_spec

    cfg = config_for(model_type, feature)
    state, constants = dict(vars(cfg)), (type(cfg).DUMMY_SEED, getattr(type(cfg), "PAST_SEQUENCE", None))
    export_spec, validation = DummySpec(), validation_spec(cfg)
    alone = [cfg.dummy_inputs(None, spec) for spec in (export_spec, validation)]
    assert vars(cfg) == state and (type(cfg).DUMMY_SEED, getattr(type(cfg), "PAST_SEQUENCE", None)) == constants
    with ThreadPoolExecutor(4) as pool:  # one config, draws interleaved from four threads
        together = list(pool.map(lambda spec: cfg.dummy_inputs(None, spec), [export_spec, validation] * 8))
    for index, inputs in enumerate(together):
        expected = alone[index % 2]
        assert list(inputs) == list(expected) and all(np.array_equal(inputs[k], expected[k]) for k in inputs)
    assert any(not np.array_equal(alone[0][k], alone[1][k]) for k in alone[0] if alone[0][k].shape == alone[1][k].shape) or \
        any(alone[0][k].shape != alone[1][k].shape for k in alone[0])
    if feature.endswith("-with-past") and model_type == "llama":
        assert alone[1]["past_key_values.0.key"].shape[2] == cfg.PAST_SEQUENCE + 3
        assert alone[1]["attention_mask"][-1, :2].tolist() == [0, 0]  # the last row padded on the left


def test_dual_encoder_ids_come_from_the_text_tower():
    cfg = config_for("clip", "default")
    inputs = cfg.generate_dummy_inputs(None)
    text = cfg._config.text_config
    assert inputs["input_ids"].max() < text.vocab_size and (inputs["input_ids"][:, -1] == text.eos_token_id).all()
    assert cfg._config is not text


def test_loading_leaves_the_random_state_as_it_was():
    """A new head is drawn from a fixed seed without moving the process's own generator."""
    import torch

    from hatch_onnx.loading import load_model

    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first, missing = load_model("sequence-classification", str(checkpoint("bert")), "pt")
    assert torch.equal(torch.get_rng_state(), before)
    second, _ = load_model("sequence-classification", str(checkpoint("bert")), "pt")
    for name in missing:  # the new head is the same every time
        assert torch.equal(first.state_dict()[name], second.state_dict()[name])
