"""Validation by generation: a with-past graph decodes, through onnxruntime alone, what the model generates.

The one-step check (:func:`hatch_onnx.validation.validate_graph`) proves a graph computes one
forward pass with some cache. It does not prove the loop users run: the prompt with an *empty*
cache (sequence length 0: one graph serves prefill and every step), each step's ``present``
fed back as ``past``, the mask growing, positions counted past left padding. This module runs
that loop in numpy and onnxruntime, with no framework in it (:func:`decode`):

- a batch of :data:`PROMPT_LENGTHS` prompts (seeded non-special token ids), the shorter one
  padded on the left, and :data:`NEW_TOKENS` new tokens chosen greedily.

Then the model checks every step (:func:`model_steps`, :func:`verdict`): it reads the prompts and
the graph's tokens in **one forward pass** without a cache (its back-end's ``sequence_reference``).
A causal model's output at a position does not depend on what follows, so that pass holds, at
each step's position, the logits the model computes after the same prefix:

- every step's logits within the export's :class:`~hatch_onnx.validation.Tolerance`;
- every token the graph chose is the model's argmax there. By induction from the prompt, the two
  greedy sequences are then equal: this is ``generate(do_sample=False)``'s answer without its 16
  passes through the weights (the checkpoint's generation settings, forced or suppressed tokens,
  play no part: a graph's logits decide plain greedy decoding).

A step where the two disagree on the token is a failure (:class:`~hatch_onnx.errors.GenerationError`),
unless the model itself ranks the two tokens within the tolerance of each other: then both are
right, the sequences legitimately part, and the check stops there and says so (``tie``).

A graph that returns hidden states (``default-with-past``) chooses no token: its loop is
*teacher-forced*. It is fed seeded tokens (:func:`forced_tokens`) instead of its own choices, and
every step's last-position ``last_hidden_state`` is compared, within the export's tolerance, with
the model's at the same position of the same one pass. The figures say ``mode: teacher-forced``
and carry ``max_diff`` of ``output``; ``tokens_equal`` is None, there being no choice to compare
(as an encoder-decoder's teacher-forced chain reports, :mod:`hatch_onnx.graph_sets`).

The graph decodes first and the model checks after, so that an export can let a large model go
while onnxruntime holds the graph's weights and load it again for its one pass (:mod:`hatch_onnx.exporting`).

A graph whose contract is right padding (``PADDING_SIDE = "right"`` on its config: onnxruntime-genai's
builder's graphs, whose GroupQueryAttention counts a row's tokens from index 0 and takes only
lengths from the mask: :mod:`hatch_onnx.genai_builder`) is fed the same prompts padded on the
right, and each row's prefill logits are read at its last real token; then every step is as
above (the mask grows by one column, its sum is each row's length). The model's side is the
same left-padded sequence; the figures say ``padding: right``.

Which graphs: decoder-only features with past (:func:`applies`). Encoder-decoders generate from
their graph set (:mod:`hatch_onnx.graph_sets`), which uses this module's loop rules.
Light at import: numpy, onnxruntime and the back-ends are imported by the functions that use them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Union

from hatch_onnx.config import DummySpec, OnnxConfig, OnnxConfigWithPast
from hatch_onnx.errors import GenerationError
from hatch_onnx.validation import FP16_RTOL, Tolerance, open_session

NEW_TOKENS = 16
# Two prompts of different lengths: the second is padded on the left by the difference. Their
# sum with NEW_TOKENS (23) runs past the sliding windows of the fixtures (6).
PROMPT_LENGTHS = (7, 4)
# The prompts' seed is the export's plus this: not the export's draw, nor validation's.
GENERATION_SEED_OFFSET = 2
# What decides the verdict (part of the cache key of every export it applies to).
SETTINGS = {"new_tokens": NEW_TOKENS, "prompt_lengths": list(PROMPT_LENGTHS), "seed_offset": GENERATION_SEED_OFFSET}


def applies(config: OnnxConfig) -> bool:
    """Whether ``config``'s graph is validated by generation here: a decoder-only graph with past.

    ``causal-lm-with-past`` (logits out; BART's family exports its decoder alone under it: that
    graph is one too) and a decoder-only ``default-with-past`` (hidden states out, teacher-forced).
    An encoder-decoder's one-step graph takes a cross-attention cache no graph of its own makes.
    """
    if not (isinstance(config, OnnxConfigWithPast) and config.use_past):
        return False
    return config.task == "causal-lm" or (config.task == "default" and "decoder_input_ids" not in config.inputs)


def applies_to_feature(feature: str) -> bool:
    """Whether an export of ``feature`` may be validated by generation (the light core's plan, which loads no config).

    The plan keys every such export with :data:`SETTINGS`: an encoder-decoder's
    ``default-with-past`` is generation-checked through its graph set.
    """
    return feature in ("causal-lm-with-past", "default-with-past")


def output_name(config: OnnxConfig) -> str:
    """The output a step is judged by: ``logits`` (a token is chosen from them), else ``last_hidden_state``."""
    return "logits" if config.task == "causal-lm" else "last_hidden_state"


def prompts(config: OnnxConfig) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)``: the batch of prompts, left-padded, as a tokenizer pads for ``generate``."""
    import numpy as np

    rng = np.random.default_rng(config.DUMMY_SEED + GENERATION_SEED_OFFSET)
    longest = max(PROMPT_LENGTHS)
    ids = config._random_token_ids(rng, (len(PROMPT_LENGTHS), longest))
    mask = np.ones_like(ids)
    for row, length in enumerate(PROMPT_LENGTHS):
        mask[row, : longest - length] = 0
        ids[row, : longest - length] = pad_token_id(config)
    return ids, mask


def forced_tokens(config: OnnxConfig) -> Any:
    """The seeded tokens a teacher-forced loop feeds after the prompt, ``(batch, NEW_TOKENS)``."""
    import numpy as np

    rng = np.random.default_rng(config.DUMMY_SEED + GENERATION_SEED_OFFSET + 1)
    return config._random_token_ids(rng, (len(PROMPT_LENGTHS), NEW_TOKENS))


def pad_token_id(config: OnnxConfig) -> int:
    """The id padding positions hold: the model's pad token, else its eos, else 0 (the mask hides it anyway)."""
    model_config = config._text_config
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(model_config, name, None)
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int) and value >= 0:
            return value
    return 0


def padding_side(config: OnnxConfig) -> str:
    """Where the graph's contract puts a shorter prompt's padding: ``left`` (ours) or ``right`` (genai's builder)."""
    return getattr(config, "PADDING_SIDE", "left")


def _right_padded(input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
    """The same prompts with their padding moved to the right (the pad ids kept)."""
    import numpy as np

    ids, mask = np.array(input_ids), np.zeros_like(attention_mask)
    for row in range(ids.shape[0]):
        real = np.asarray(attention_mask[row]) == 1
        count = int(real.sum())
        ids[row] = np.concatenate([input_ids[row][real], input_ids[row][~real]])
        mask[row, :count] = 1
    return ids, mask


def _positions(mask: Any) -> Any:
    """What ``generate`` computes: positions count the tokens attended to; padding gets 1."""
    import numpy as np

    return np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1).astype(np.int64)


def _empty_cache(config: OnnxConfig, batch: int) -> dict[str, Any]:
    """The graph's past inputs at sequence length 0, shaped by the config's own draw (every family's cache shape)."""
    draw = config.dummy_inputs(None, DummySpec(batch_size=batch, past_length=0))
    return {name: value for name, value in draw.items() if name.startswith("past_key_values.")}


_FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


def generate_onnx(session: Any, config: OnnxConfig, input_ids: Any, attention_mask: Any, new_tokens: int,
                  forced: Optional[Any] = None, output: str = "logits") -> tuple[Any, Any]:
    """Greedy decoding through ``session`` alone: ``(new tokens (batch, n), last-position outputs (n, batch, ...))``.

    ``forced`` (batch, n): feed these tokens instead of the graph's own choices, so that a
    comparison can go on past a tie (or a graph without logits can be driven); None feeds what
    the graph chose from ``output`` (``logits``).
    """
    import numpy as np

    declared = {node.name: node.type for node in session.get_inputs()}
    names = [node.name for node in session.get_outputs()]
    batch = input_ids.shape[0]
    right = padding_side(config) == "right"
    if right:
        input_ids, attention_mask = _right_padded(input_ids, attention_mask)
    lengths = attention_mask.sum(axis=1)
    past = _empty_cache(config, batch)
    mask, step_ids = attention_mask, input_ids
    tokens, logits = [], []
    for step in range(new_tokens):
        feed = {"input_ids": step_ids, "attention_mask": mask, **past}
        if "position_ids" in declared:
            feed["position_ids"] = _positions(mask)[:, -step_ids.shape[1]:]
        for name, value in feed.items():
            if value.dtype.kind == "f" and declared.get(name) in _FLOAT_TYPES:
                feed[name] = value.astype(_FLOAT_TYPES[declared[name]])
        outputs = dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in declared})))
        values = np.asarray(outputs[output])
        # right padding: a row's prompt ends at its length, not at the last column
        last = (values[np.arange(batch), lengths - 1] if right and step == 0 else values[:, -1]).astype(np.float32)
        chosen = last.argmax(-1).astype(np.int64) if forced is None else np.asarray(forced)[:, step]
        tokens.append(chosen)
        logits.append(last)
        past = {name.replace("present", "past_key_values", 1): value for name, value in outputs.items() if name.startswith("present")}
        step_ids = chosen[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=mask.dtype)], axis=1)
    return np.stack(tokens, axis=1), np.stack(logits)


@dataclasses.dataclass(frozen=True)
class Decoded:
    """What a graph decoded from :func:`prompts` through onnxruntime alone: the first half of a check (:func:`decode`).

    The model's half comes after (:func:`model_steps`): a graph is opened, decodes and is closed
    before the model is needed again, so that a large model can be let go of while onnxruntime
    holds the graph's weights, and loaded again after (:mod:`hatch_onnx.exporting`).
    """

    input_ids: Any  # the prompts, left-padded (as ``generate`` pads them; a right-padding graph is fed them moved)
    attention_mask: Any
    tokens: Any  # (batch, NEW_TOKENS): the graph's greedy choices, or the tokens forced on it
    outputs: Any  # (NEW_TOKENS, batch, ...): each step's last-position logits, or hidden states
    output: str  # which: "logits" or "last_hidden_state"
    half: bool  # the graph returns it in float16 (the comparison then allows float16's relative slack)


def decode(session: Any, config: OnnxConfig) -> Decoded:
    """Greedy decoding of :func:`prompts` through ``session`` (teacher-forced on :func:`forced_tokens` for hidden states)."""
    input_ids, mask = prompts(config)
    output = output_name(config)
    forced = None if output == "logits" else forced_tokens(config)
    tokens, outputs = generate_onnx(session, config, input_ids, mask, NEW_TOKENS, forced=forced, output=output)
    half = any(node.name == output and node.type == "tensor(float16)" for node in session.get_outputs())
    return Decoded(input_ids, mask, tokens, outputs, output, half)


def model_steps(model: Any, config: OnnxConfig, decoded: Decoded) -> Any:
    """The model's output at every step the graph decoded, ``(NEW_TOKENS, batch, ...)``: one forward pass, no cache.

    The model reads the prompt followed by the tokens the graph chose (or was fed), but the last
    (its output is no step's). A causal model's output at a position does not depend on what
    follows it, so position ``prompt + step - 1`` holds what the model computes at that step given
    the same prefix, and its argmax is what greedy ``generate`` would choose there: equal tokens at
    every step are equal greedy sequences, at the cost of one forward pass instead of one per token
    (16 passes through every weight, at batch 2, took 4 s of a 0.5B export).
    """
    import numpy as np

    from hatch_onnx.frameworks import backend_of

    prompt = decoded.input_ids.shape[1]
    sequence = np.concatenate([decoded.input_ids, np.asarray(decoded.tokens[:, :-1], dtype=decoded.input_ids.dtype)], axis=1)
    full_mask = np.ones_like(sequence)
    full_mask[:, :prompt] = decoded.attention_mask
    named = {"input_ids": sequence, "attention_mask": full_mask}
    # Positions as generate computes them from the mask: what the loop feeds a graph that takes them, and
    # what a right-padded graph counts from each row's first token. A left-padded graph without them
    # counts from index 0, as the model does when given none.
    if "position_ids" in config.inputs or padding_side(config) == "right":
        named["position_ids"] = _positions(full_mask)
    values = backend_of(model).sequence_reference(model, config, named, decoded.output)
    return np.stack([values[:, prompt - 1 + step] for step in range(NEW_TOKENS)])


def verdict(decoded: Decoded, expected: Any, config: OnnxConfig, tolerance: Tolerance, label: str = "",
            enforce: bool = True) -> dict[str, Any]:
    """Compare every step the graph decoded with the model's (:func:`model_steps`); raise unless they agree.

    Returns the figures the report and manifest carry: ``steps`` compared, ``tokens_equal``,
    ``max_logits_diff`` (the worst over every step and row), the tokens, and ``tie`` (the step
    where the model ranks two tokens within the tolerance, if the sequences part there); for
    hidden states, ``mode: teacher-forced`` and ``max_diff``. ``enforce`` False (lossy variants)
    reports the same figures without raising.
    """
    import numpy as np

    prefix = f"{label}: generation" if label else "generation"
    if decoded.output == "logits":
        chosen = np.asarray(expected).argmax(-1).T  # (batch, NEW_TOKENS): what the model chooses after the same prefix
        figures = _compare_steps(decoded.tokens, decoded.outputs, chosen, expected, tolerance, prefix, decoded.half)
    else:
        figures = _compare_states(decoded.outputs, expected, tolerance, prefix, decoded.half)
    if padding_side(config) != "left":  # said only where it differs: every other export's figures stay as they were
        figures["padding"] = padding_side(config)
    if "failure" in figures and enforce:
        raise GenerationError(figures["failure"], output=decoded.output, value=figures)
    return figures


def validate_generation(graph: Union[str, Path], model: Any, config: OnnxConfig, tolerance: Tolerance, label: str = "",
                        enforce: bool = True, session: Any = None) -> dict[str, Any]:
    """Decode :data:`NEW_TOKENS` tokens through the graph, then check each step against ``model``: all of a check at once.

    ``session``: the graph's, already open (validation's). An export of a large model runs the
    halves apart (:func:`decode`, then :func:`model_steps` and :func:`verdict`), with the model
    let go of between them.
    """
    session = session or open_session(graph, f"{label} graph" if label else "the exported graph")
    decoded = decode(session, config)
    return verdict(decoded, model_steps(model, config, decoded), config, tolerance, label, enforce)


def _compare_states(states: Any, expected: Any, tolerance: Tolerance, prefix: str, half: bool) -> dict[str, Any]:
    """Teacher-forced steps: each step's hidden states within the tolerance (or above a lossy variant's cosine floor)."""
    import numpy as np

    figures: dict[str, Any] = {
        "batch": len(PROMPT_LENGTHS), "prompt_lengths": list(PROMPT_LENGTHS), "new_tokens": NEW_TOKENS,
        "mode": "teacher-forced", "output": "last_hidden_state", "tokens_equal": None,
        "tokens_compared": "n/a: the graph returns hidden states, no token is chosen; a seeded token sequence is fed",
    }
    worst, steps, failure = 0.0, 0, None
    for step in range(NEW_TOKENS):
        reference_step, result = expected[step].astype(np.float64), states[step].astype(np.float64)
        diff = float(np.abs(reference_step - result).max()) if not np.isnan(result).any() else float("inf")
        worst, steps = max(worst, diff), step + 1
        if tolerance.min_cosine is not None:  # a lossy variant: its floor, on each step's states
            cosine = _cosine(reference_step, result)
            if not cosine >= tolerance.min_cosine:
                failure = f"{prefix}: step {step}: hidden states' cosine {cosine:.4f}, below {tolerance.min_cosine:g}"
                break
        elif not diff <= (allowed := _allowed(tolerance, reference_step, half)):
            failure = f"{prefix}: step {step}: last_hidden_state differs by {diff:.3g}, beyond {allowed:g}"
            break
    figures.update({"steps": steps, "max_diff": worst})
    if tolerance.atol is not None:
        figures["atol"] = tolerance.atol
    if failure is not None:
        figures["failure"] = failure
    return figures


def _cosine(a: Any, b: Any) -> float:
    import numpy as np

    a, b = a.ravel(), b.ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _compare_steps(tokens: Any, logits: Any, expected_tokens: Any, expected_logits: Any, tolerance: Tolerance, prefix: str,
                   half: bool) -> dict[str, Any]:
    """Step by step: the logits within the tolerance, then the tokens; the figures, ``failure`` set where they part."""
    import numpy as np

    figures: dict[str, Any] = {"batch": len(PROMPT_LENGTHS), "prompt_lengths": list(PROMPT_LENGTHS), "new_tokens": NEW_TOKENS}
    worst, steps, tie, failure = 0.0, 0, None, None
    for step in range(NEW_TOKENS):
        reference, result = expected_logits[step].astype(np.float64), logits[step].astype(np.float64)
        diff = float(np.abs(reference - result).max()) if not np.isnan(result).any() else float("inf")
        worst = max(worst, diff)
        steps = step + 1
        allowed = _allowed(tolerance, reference, half)
        if not diff <= allowed:
            failure = f"{prefix}: step {step}: logits differ by {diff:.3g}, beyond {allowed:g}"
            break
        differing = np.flatnonzero(tokens[:, step] != expected_tokens[:, step])
        if differing.size:
            row = int(differing[0])
            ours, theirs = int(tokens[row, step]), int(expected_tokens[row, step])
            margin = float(reference[row, theirs] - reference[row, ours])
            if tolerance.atol is not None and margin <= allowed:  # the model itself cannot tell them apart: both are right
                tie = {"step": step, "row": row, "tokens": [theirs, ours], "margin": margin}
            else:
                failure = (f"{prefix}: step {step}, row {row}: token {ours} from ONNX, {theirs} from the model "
                           f"(which prefers it by {margin:.3g}; logits within {diff:.3g})")
            break
    figures.update({
        "steps": steps,
        "tokens_equal": failure is None and tie is None,
        "max_logits_diff": worst,
        "tokens": np.asarray(expected_tokens).tolist(),
        "distinct_tokens": int(len(np.unique(expected_tokens))),
    })
    if tolerance.atol is not None:
        figures["atol"] = tolerance.atol
    if tie is not None:
        figures["tie"] = tie
    if failure is not None:
        figures["failure"] = failure
    return figures


def _allowed(tolerance: Tolerance, reference: Any, half: bool) -> float:
    """How far a step's logits may be from the model's: the atol (plus float16's slack, as the one-step check)."""
    import numpy as np

    if tolerance.atol is None:  # a cosine floor has no per-logit bound: only the tokens decide
        return float("inf")
    slack = FP16_RTOL * float(np.abs(reference).max()) if half else 0.0
    return tolerance.atol + slack
