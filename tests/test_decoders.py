"""Today's decoders, checked independently of the exporter's own validation.

Validation compares the graph with the model through the same adapter that exported it. Here
the exported ``causal-lm-with-past`` graph decodes as a generation loop would (the prompt with
an empty cache, then one token at a time, each step's ``present`` fed back as ``past``), over a
batch whose second prompt is shorter and padded on the left, past the sliding windows of the
fixtures (6 tokens). Every step's logits must match transformers' own forward pass over the
whole sequence, with no cache at all.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import checkpoint
from hatch_onnx.exporting import ExportRequest, export_checkpoint
from hatch_onnx.models import REGISTRY, RotaryDecoderOnnxConfig

ROTARY = sorted(m for m, support in REGISTRY.items() if issubclass(support.onnx_config, RotaryDecoderOnnxConfig))
PROMPT, PADDING, STEPS = 7, 3, 5  # 7 + 5 tokens: beyond the fixtures' window of 6


def test_every_rotary_decoder_is_covered():
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3-text", "phi3", "granite", "olmo2", "smollm3"} <= set(ROTARY)


def _positions(mask: np.ndarray) -> np.ndarray:
    return np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1).astype(np.int64)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ROTARY)
def test_greedy_decoding_matches_the_model_without_cache(model_type, tmp_path):
    import onnxruntime
    import torch
    import transformers

    folder = checkpoint(model_type)
    export_checkpoint(ExportRequest(model=folder, feature="causal-lm-with-past"), tmp_path, log=lambda line: None)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    config = model.config
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    rng = np.random.default_rng(0)
    ids = rng.integers(5, config.vocab_size, size=(2, PROMPT), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, :PADDING] = 0
    ids[1, :PADDING] = config.pad_token_id
    past = {f"past_key_values.{i}.{kind}": np.zeros((2, kv_heads, 0, head_dim), np.float32) for i in range(layers) for kind in ("key", "value")}
    step_ids = ids
    for step in range(STEPS):
        feed = {"input_ids": step_ids, "attention_mask": mask, "position_ids": _positions(mask)[:, -step_ids.shape[1]:], **past}
        logits, *presents = session.run(None, feed)
        with torch.no_grad():
            expected = model(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(_positions(mask)), use_cache=False,
            ).logits.numpy()[:, -step_ids.shape[1]:]
        real = mask[:, -step_ids.shape[1]:] == 1  # padded positions may differ: nobody reads them
        np.testing.assert_allclose(logits[real], expected[real], atol=1e-4, err_msg=f"{model_type}, step {step}")
        past = {name.replace("present", "past_key_values"): value for name, value in zip([o.name for o in session.get_outputs()][1:], presents)}
        assert next(iter(past.values())).shape[2] == ids.shape[1]
        step_ids = logits[:, -1:].argmax(-1).astype(np.int64)
        ids = np.concatenate([ids, step_ids], axis=1)
        mask = np.concatenate([mask, np.ones_like(step_ids)], axis=1)


@pytest.mark.slow
def test_sliding_window_is_part_of_the_graph(tmp_path):
    """Mistral's window decides the output: a graph that ignored it would match a window-less model."""
    import onnxruntime
    import torch
    import transformers

    folder = checkpoint("mistral")
    export_checkpoint(ExportRequest(model=folder, feature="causal-lm"), tmp_path, log=lambda line: None)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(1).integers(5, 200, size=(1, 16), dtype=np.int64)
    mask = np.ones_like(ids)
    logits = session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "position_ids": _positions(mask)})[0]
    windowless = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", sliding_window=None).eval()
    with torch.no_grad():
        unwindowed = windowless(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(logits[:, :6] - unwindowed[:, :6]).max() < 1e-4  # inside the window: the same
    assert np.abs(logits[:, 6:] - unwindowed[:, 6:]).max() > 1e-2  # beyond it: the window matters
