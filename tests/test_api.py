"""The public API keeps the transformers.onnx v4.24 names and signatures, and imports no framework."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import hatch_onnx
from hatch_onnx import FeaturesManager, OnnxConfig, OnnxConfigWithPast, OnnxSeq2SeqConfigWithPast, PatchingSpec
from hatch_onnx.models import REGISTRY

HEAVY = ("torch", "tensorflow", "transformers", "onnxruntime", "tf2onnx", "onnx")


def params(func) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p not in ("self", "cls")]


def test_import_loads_no_framework():
    code = (
        "import sys, hatch_onnx; from hatch_onnx import FeaturesManager, OnnxConfig, export; "
        "FeaturesManager.get_supported_features_for_model_type('bert'); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "func, expected",
    [
        (OnnxConfig.__init__, ["config", "task", "patching_specs"]),
        (OnnxConfig.from_model_config, ["config", "task"]),
        (
            OnnxConfig.generate_dummy_inputs,
            ["preprocessor", "batch_size", "seq_length", "num_choices", "is_pair", "framework", "num_channels",
             "image_width", "image_height", "sampling_rate", "time_duration", "frequency", "tokenizer"],
        ),
        (OnnxConfig.generate_dummy_inputs_onnxruntime, ["reference_model_inputs"]),
        (OnnxConfig.use_external_data_format, ["num_parameters"]),
        (OnnxConfig.flatten_output_collection_property, ["name", "field"]),
        (OnnxConfigWithPast.__init__, ["config", "task", "patching_specs", "use_past"]),
        (OnnxConfigWithPast.with_past, ["config", "task"]),
        (OnnxConfigWithPast.fill_with_past_key_values_, ["inputs_or_outputs", "direction", "inverted_values_shape"]),
        (OnnxSeq2SeqConfigWithPast.__init__, ["config", "task", "patching_specs", "use_past"]),
        (FeaturesManager.check_supported_model_or_raise, ["model", "feature"]),
        (FeaturesManager.determine_framework, ["model", "framework"]),
        (FeaturesManager.get_config, ["model_type", "feature"]),
        (FeaturesManager.get_model_class_for_feature, ["feature", "framework"]),
        (FeaturesManager.get_model_from_feature, ["feature", "model", "framework", "cache_dir"]),
        (FeaturesManager.get_supported_features_for_model_type, ["model_type", "model_name"]),
        (hatch_onnx.export, ["preprocessor", "model", "config", "opset", "output", "tokenizer", "device", "exporter"]),
        (hatch_onnx.validate_model_outputs, ["config", "preprocessor", "reference_model", "onnx_model", "onnx_named_outputs", "atol"]),
    ],
)
def test_signatures(func, expected):
    assert params(func) == expected


def test_defaults_match_legacy():
    sig = inspect.signature(OnnxConfig.generate_dummy_inputs).parameters
    assert [sig[n].default for n in ("batch_size", "seq_length", "num_choices", "is_pair", "num_channels", "image_width", "image_height", "sampling_rate", "time_duration", "frequency")] == [-1, -1, -1, False, 3, 40, 40, 22050, 5.0, 220]
    assert inspect.signature(hatch_onnx.export).parameters["device"].default == "cpu"
    assert [f.name for f in PatchingSpec.__dataclass_fields__.values()] == ["o", "name", "custom_op", "orig_op", "op_wrapper"]
    assert issubclass(OnnxSeq2SeqConfigWithPast, OnnxConfigWithPast) and issubclass(OnnxConfigWithPast, OnnxConfig)


def test_support_matrix_covers_the_issue():
    expected = {  # the legacy list's 59 model types, with their number of features
        "albert": 6, "bart": 8, "beit": 2, "bert": 7, "big-bird": 7, "bigbird-pegasus": 8, "blenderbot": 6,
        "blenderbot-small": 6, "bloom": 6, "camembert": 7, "clip": 1, "codegen": 2, "convbert": 6, "convnext": 2,
        "data2vec-text": 6, "data2vec-vision": 2, "deberta": 5, "deberta-v2": 6, "deit": 2, "detr": 3, "distilbert": 6,
        "electra": 7, "flaubert": 7, "gpt-neo": 5, "gpt2": 6, "gptj": 6, "groupvit": 1, "ibert": 6, "imagegpt": 2,
        "layoutlm": 4, "layoutlmv3": 4, "levit": 2, "longformer": 6, "longt5": 4, "m2m-100": 4, "marian": 6, "mbart": 8,
        "mobilebert": 6, "mobilenet-v1": 2, "mobilenet-v2": 2, "mobilevit": 2, "mt5": 4, "owlvit": 1, "perceiver": 3,
        "poolformer": 2, "rembert": 7, "resnet": 2, "roberta": 7, "roformer": 7, "segformer": 3, "squeezebert": 6,
        "swin": 2, "t5": 4, "vision-encoder-decoder": 2, "vit": 3, "whisper": 4, "xlm": 7, "xlm-roberta": 7, "yolos": 2,
        # today's encoders and vision (issue 12)
        "dinov2": 2, "modernbert": 4, "siglip": 2,
        # today's decoders (issue 12)
        "gemma2": 6, "gemma3-text": 5, "granite": 4, "llama": 6, "mistral": 6, "olmo2": 5, "phi3": 6, "qwen2": 6, "qwen3": 6, "smollm3": 6,
    }
    # vision-encoder-decoder's second: vision2seq-lm-with-past, the graph set image-to-text generates from (issue 22)
    assert {name: len(support.features) for name, support in REGISTRY.items()} == expected
    assert sum(len(support.tensorflow) for support in REGISTRY.values()) == 174  # tests/test_tensorflow.py checks which
    with pytest.raises(TypeError):
        REGISTRY["new"] = REGISTRY["bert"]  # frozen


def test_unknown_model_type_lists_supported():
    from hatch_onnx.errors import UnsupportedModelTypeError

    with pytest.raises(UnsupportedModelTypeError, match="supported: albert, bart"):
        FeaturesManager.get_supported_features_for_model_type("llama-ish")
    with pytest.raises(KeyError):  # legacy callers catch KeyError
        FeaturesManager.get_config("bert", "seq2seq-lm")
