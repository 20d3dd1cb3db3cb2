"""The graph set of an encoder-decoder with past: the graphs generation needs, as consumers name them.

``seq2seq-lm-with-past`` as one graph is a single decoding step: it takes the encoder's
cross-attention cache, which no graph produced. A set that generates is four graphs, with the
names and inputs Optimum's ``ORTModelForSeq2SeqLM`` and transformers.js's text2text-generation
look for:

=============================  =========================================================================
``encoder_model.onnx``         ``input_ids``, ``attention_mask`` -> ``last_hidden_state``
``decoder_model.onnx``         the first step: ``encoder_attention_mask``, ``input_ids``,
                               ``encoder_hidden_states`` -> ``logits`` and the whole present cache,
                               ``present.{i}.decoder|encoder.key|value``
``decoder_with_past_model``    a later step: ``encoder_attention_mask``, ``input_ids``,
                               ``past_key_values.{i}.decoder|encoder.key|value`` -> ``logits`` and the
                               self-attention cache ``present.{i}.decoder.*`` (the cross cache is fixed)
``decoder_model_merged.onnx``  both decoders in one graph: ``use_cache_branch`` picks an ONNX ``If``
                               branch; the two share their weights (deduplicated by content); its
                               with-past branch passes the encoder cache through, so both return
                               the same outputs
=============================  =========================================================================

Each graph is validated on its own against the model at other shapes than the export's,
and the chain (encoder, then the merged decoder, and the two decoders apart) by a greedy
generation through onnxruntime alone (:func:`validate_chain`, by :mod:`hatch_onnx.generation`'s rules).

PyTorch's graphs are traced here (the TorchScript exporter, named explicitly); TensorFlow's by its back-end
(``export_graph_set``, ``graph_set_reference`` in :mod:`hatch_onnx.frameworks.tensorflow`, tf2onnx) from the same
interfaces and export inputs; the merge, validation and chain are the same. Heavy imports inside functions.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from hatch_onnx.layouts import GRAPH_SET as GRAPHS

ENCODER, DECODER, DECODER_WITH_PAST, DECODER_MERGED = GRAPHS
FEATURE = "seq2seq-lm-with-past"
# The families whose set is exported: text encoder-decoders whose model takes input_ids, an
# attention mask, decoder_input_ids and encoder_outputs (Whisper's and vision-encoder-decoder's
# encoders take other inputs: not yet).
FAMILIES = frozenset({"t5", "mt5", "longt5", "bart", "mbart", "marian", "m2m-100", "blenderbot", "blenderbot-small", "bigbird-pegasus"})
# Part of the cache key of the jobs that make a set: changing how sets are made re-makes them.
VERSION = 1


def applies(model_type: str, feature: str, framework: str) -> bool:
    """Whether an export of ``feature`` also writes the graph set (the families above, from either framework:
    each back-end's ``export_graph_set``; TensorFlow's are those of them with TF classes)."""
    return feature == FEATURE and framework in ("pt", "tf") and model_type in FAMILIES
USE_CACHE_BRANCH = "use_cache_branch"
# Export shapes, and validation's: every dynamic axis at another size.
EXPORT_SHAPES = {"batch": 2, "encoder": 8, "decoder": 3, "past": 4}
VALIDATION_SHAPES = {"batch": 3, "encoder": 11, "decoder": 2, "past": 6}


def cache_names(config: Any, direction: str, parts: tuple[str, ...] = ("decoder", "encoder")) -> list[str]:
    """``past_key_values.{i}.{part}.{kind}`` (inputs) or ``present.…`` (outputs), layer by layer."""
    prefix = "past_key_values" if direction == "inputs" else "present"
    return [f"{prefix}.{i}.{part}.{kind}" for i in range(config.num_layers) for part in parts for kind in ("key", "value")]


def interfaces(config: Any) -> dict[str, tuple[dict[str, dict[int, str]], dict[str, dict[int, str]]]]:
    """Each exported graph's (inputs, outputs) with their named dynamic axes, in order."""
    batch, enc, dec, past = "batch_size", "encoder_sequence_length", "decoder_sequence_length", "past_decoder_sequence_length"
    presents_self = {name: {0: batch, 2: "decoder_total_length"} for name in cache_names(config, "outputs", ("decoder",))}
    cache_in = {}
    for name in cache_names(config, "inputs"):
        cache_in[name] = {0: batch, 2: past if ".decoder." in name else "encoder_sequence_length_out"}
    presents_all = {}
    for name in cache_names(config, "outputs"):
        presents_all[name] = {0: batch, 2: "decoder_total_length" if ".decoder." in name else "encoder_sequence_length_out"}
    return {
        ENCODER: ({"input_ids": {0: batch, 1: enc}, "attention_mask": {0: batch, 1: enc}}, {"last_hidden_state": {0: batch, 1: enc}}),
        DECODER: ({"encoder_attention_mask": {0: batch, 1: enc}, "input_ids": {0: batch, 1: dec}, "encoder_hidden_states": {0: batch, 1: enc}},
                  {"logits": {0: batch, 1: dec}, **presents_all}),
        DECODER_WITH_PAST: ({"encoder_attention_mask": {0: batch, 1: enc}, "input_ids": {0: batch, 1: dec}, **cache_in},
                            {"logits": {0: batch, 1: dec}, **presents_self}),
    }


def _modules(model: Any) -> dict[str, Any]:
    """The three PyTorch callables the graphs are traced from, each ``forward(*inputs) -> tuple``."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    from hatch_onnx.frameworks.pytorch import _cache_argument, _cache_from_flat, _encoder_placeholder, _present, _returned_cache

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> tuple:
            return (self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state,)

    class Decoder(torch.nn.Module):
        def __init__(self, input_names: list[str], output_names: list[str], with_past: bool) -> None:
            super().__init__()
            self.model, self.input_names, self.output_names, self.with_past = model, input_names, output_names, with_past
            self.cache_argument = _cache_argument(model)

        def forward(self, *tensors: Any) -> tuple:
            named = dict(zip(self.input_names, tensors))
            kwargs: dict[str, Any] = {"decoder_input_ids": named["input_ids"], "attention_mask": named["encoder_attention_mask"],
                                      "use_cache": True, "return_dict": True}
            if self.with_past:
                cache = _cache_from_flat(named)
                kwargs[self.cache_argument] = cache
                kwargs["encoder_outputs"] = _encoder_placeholder(self.model, cache)
            else:
                kwargs["encoder_outputs"] = BaseModelOutput(last_hidden_state=named["encoder_hidden_states"])
            out = self.model(**kwargs)
            cache = _returned_cache(out)
            return (out.logits, *(_present(cache, name) for name in self.output_names[1:]))

    return {"encoder": Encoder, "decoder": Decoder}


def dummy_inputs(config: Any, graph: str, shapes: Mapping[str, int], seed: int) -> dict[str, Any]:
    """Seeded inputs of ``graph`` at ``shapes`` (numpy); the second row's encoder input padded on the left by 2."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batch, enc, dec, past = shapes["batch"], shapes["encoder"], shapes["decoder"], shapes["past"]
    hidden = int(getattr(config._config, "d_model", None) or config._config.hidden_size)
    mask = np.ones((batch, enc), dtype=np.int64)
    mask[1, :2] = 0
    if graph == ENCODER:
        return {"input_ids": config._random_token_ids(rng, (batch, enc)), "attention_mask": mask}
    inputs: dict[str, Any] = {"encoder_attention_mask": mask}
    if graph == DECODER:
        inputs["input_ids"] = config._random_token_ids(rng, (batch, dec))
        inputs["encoder_hidden_states"] = rng.standard_normal((batch, enc, hidden), dtype=np.float32)
        return inputs
    inputs["input_ids"] = config._random_token_ids(rng, (batch, 1))
    for name in cache_names(config, "inputs"):
        length = past if ".decoder." in name else enc
        inputs[name] = rng.standard_normal(config._past_shape(batch, length), dtype=np.float32)
    return inputs


def export_set(model: Any, config: Any, opset: int, folder: Path) -> dict[str, list[str]]:
    """Write the four graphs into ``folder``; returns each graph's output names."""
    tracer = _tracing_backend(model)
    if tracer is not None:
        dummies = {graph: dummy_inputs(config, graph, EXPORT_SHAPES, config.DUMMY_SEED) for graph in interfaces(config)}
        written = tracer.export_graph_set(model, config, opset, folder, interfaces(config), dummies)
        merge_decoders(folder / DECODER, folder / DECODER_WITH_PAST, folder / DECODER_MERGED)
        return {**written, DECODER_MERGED: written[DECODER]}
    import torch

    from hatch_onnx.frameworks.pytorch import _export_torchscript, patched, prepare_model, torch_patches, transformers_patches

    model = prepare_model(model, config)
    classes = _modules(model)
    written = {}
    for graph, (inputs, outputs) in interfaces(config).items():
        names_in, names_out = list(inputs), list(outputs)
        module = classes["encoder"]() if graph == ENCODER else classes["decoder"](names_in, names_out, graph == DECODER_WITH_PAST)
        args = tuple(torch.from_numpy(value) for value in dummy_inputs(config, graph, EXPORT_SHAPES, config.DUMMY_SEED).values())
        axes = {name: dict(value) for name, value in {**inputs, **outputs}.items()}
        import warnings

        with patched(config, [*transformers_patches(), *torch_patches()]), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _export_torchscript(module, args, folder / graph, names_in, names_out, axes, opset, False)
        _fix_cache_axes(folder / graph, config)
        written[graph] = names_out
    merge_decoders(folder / DECODER, folder / DECODER_WITH_PAST, folder / DECODER_MERGED)
    written[DECODER_MERGED] = written[DECODER]
    return written


def _tracing_backend(model: Any) -> Optional[Any]:
    """The back-end that traces ``model``'s set from the interfaces above (TensorFlow's), or None: PyTorch's
    modules are this module's."""
    from hatch_onnx.frameworks import backend_of

    backend = backend_of(model)
    return None if backend.FRAMEWORK == "pt" else backend


def _fix_cache_axes(path: Path, config: Any) -> None:
    """Give every cache tensor its fixed heads and head size: the tracer names them on some lines (4.57's
    cross-attention cache) and fixes them on others, and a graph's interface must be the same on both."""
    import onnx

    from hatch_onnx.config import PAST, PRESENT

    model = onnx.load(str(path))
    _, heads, _, head_dim = config._past_shape(1, 0)
    for value in [*model.graph.input, *model.graph.output]:
        if PAST.match(value.name) or PRESENT.match(value.name):
            dims = value.type.tensor_type.shape.dim
            for axis, size in ((1, heads), (3, head_dim)):
                dims[axis].Clear()
                dims[axis].dim_value = int(size)
    onnx.save_model(model, str(path))


def merge_decoders(first: Path, with_past: Path, target: Path) -> None:
    """One graph over both decoders: ``If(use_cache_branch)``, their weights shared where equal.

    The merged graph's inputs are the union (the first step's ``encoder_hidden_states`` and the
    whole past); its outputs the first step's (logits and the whole present cache). The
    with-past branch returns the encoder cache it was given (Identity): consumers read the same
    names at every step. Each branch's own names get a prefix, so no name is defined twice;
    initializers of equal content (dtype, shape, bytes) become one, at the top.
    """
    import onnx
    from onnx import helper

    models = {"first": onnx.load(str(first)), "past": onnx.load(str(with_past))}
    shared: dict[str, Any] = {}
    by_content: dict[tuple, str] = {}
    renames: dict[str, dict[str, str]] = {}
    for branch, model in models.items():
        renames[branch] = {}
        for tensor in model.graph.initializer:
            nameless = onnx.TensorProto()
            nameless.CopyFrom(tensor)
            nameless.name = ""
            key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(nameless.SerializeToString()).hexdigest())
            name = by_content.get(key)
            if name is None:
                name = f"shared_{len(by_content)}"
                by_content[key] = name
                copy = onnx.TensorProto()
                copy.CopyFrom(tensor)
                copy.name = name
                shared[name] = copy
            renames[branch][tensor.name] = name
    outer_inputs: dict[str, Any] = {}
    for model in models.values():
        for value in model.graph.input:
            outer_inputs.setdefault(value.name, value)
    first_outputs = [value.name for value in models["first"].graph.output]
    branches = {}
    for branch, model in models.items():
        def rename(name: str, branch: str = branch) -> str:
            if not name or name in outer_inputs:
                return name
            if name in renames[branch]:
                return renames[branch][name]
            return f"{branch}/{name}"

        nodes = []
        for node in model.graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{branch}/{node.name}"
            copy.input[:] = [rename(name) for name in node.input]
            copy.output[:] = [rename(name) for name in node.output]
            _rename_in_bodies(copy, rename)
            nodes.append(copy)
        produced = {value.name: value for value in model.graph.output}
        outputs = []
        for name in first_outputs:
            if name in produced:
                value = onnx.ValueInfoProto()
                value.CopyFrom(produced[name])
                value.name = rename(name)
            else:  # the with-past branch hands the encoder cache through
                source = name.replace("present", "past_key_values", 1)
                value = onnx.ValueInfoProto()
                value.CopyFrom(outer_inputs[source])
                value.name = f"{branch}/{name}"
                nodes.append(helper.make_node("Identity", [source], [value.name], name=f"{branch}/pass/{name}"))
            # branch outputs carry their type only: their axes may differ between the branches
            for dim in value.type.tensor_type.shape.dim:
                dim.Clear()
            outputs.append(value)
        branches[branch] = helper.make_graph(nodes, f"{branch}_branch", [], outputs)
    flag = helper.make_tensor_value_info(USE_CACHE_BRANCH, onnx.TensorProto.BOOL, [1])
    node = helper.make_node("If", [USE_CACHE_BRANCH], first_outputs, name="optimum::if", then_branch=branches["past"],
                            else_branch=branches["first"])
    graph = helper.make_graph([node], "merged_decoder", [*outer_inputs.values(), flag],
                              list(models["first"].graph.output), initializer=list(shared.values()))
    merged = helper.make_model(graph, opset_imports=list(models["first"].opset_import), producer_name="hatch-onnx")
    merged.ir_version = models["first"].ir_version
    onnx.save_model(merged, str(target))


def _rename_in_bodies(node: Any, rename: Any) -> None:
    """The same renaming inside a node's subgraphs (tf2onnx's If and Loop), which read the branch's names."""
    from hatch_onnx.graph_passes import _bodies

    for body in _bodies(node):
        for inner in body.node:
            inner.input[:] = [rename(name) for name in inner.input]
            inner.output[:] = [rename(name) for name in inner.output]
            _rename_in_bodies(inner, rename)
        for value in [*body.input, *body.output, *body.value_info, *body.initializer]:
            value.name = rename(value.name)


def reference_outputs(model: Any, config: Any, graph: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The PyTorch module (or the back-end's code) a graph was traced from, run on ``inputs``: named numpy outputs."""
    tracer = _tracing_backend(model)
    if tracer is not None:
        names_out = interfaces(config)[DECODER if graph == DECODER_MERGED else graph][1]
        return tracer.graph_set_reference(model, config, graph, inputs, list(names_out))
    import torch

    from hatch_onnx.frameworks.pytorch import prepare_model

    model = prepare_model(model, config)
    classes = _modules(model)
    names_in, names_out = interfaces(config)[DECODER if graph == DECODER_MERGED else graph]
    module = classes["encoder"]() if graph == ENCODER else classes["decoder"](list(names_in), list(names_out), graph == DECODER_WITH_PAST)
    with torch.no_grad():
        outputs = module(*(torch.from_numpy(value) for value in inputs.values()))
    return {name: value.numpy() for name, value in zip(names_out, outputs)}


def validate_set(folder: Path, model: Any, config: Any, atol: float, timings: Optional[dict] = None) -> dict[str, Any]:
    """Each graph on its own (at other shapes than the export's), then the chain by generation (its seconds in ``timings``)."""
    import numpy as np

    from hatch_onnx.validation import Tolerance, compare_output, describe, open_session

    report: dict[str, Any] = {"atol": atol, "graphs": {}}
    seed = config.DUMMY_SEED + 1
    for graph in GRAPHS:
        session = open_session(folder / graph, graph)
        source = DECODER if graph == DECODER_MERGED else graph
        inputs = dummy_inputs(config, source if graph != DECODER_MERGED else DECODER_WITH_PAST, VALIDATION_SHAPES, seed)
        checks = [(inputs, source if graph != DECODER_MERGED else DECODER_WITH_PAST)]
        if graph == DECODER_MERGED:
            checks = [(dummy_inputs(config, DECODER, VALIDATION_SHAPES, seed), DECODER), checks[0]]
        figures: dict[str, Any] = {}
        for feed, traced in checks:
            reference = reference_outputs(model, config, traced, feed)
            run_feed = dict(feed)
            if graph == DECODER_MERGED:
                run_feed = merged_feed(config, feed, use_cache=traced == DECODER_WITH_PAST)
            expected_names = list(interfaces(config)[DECODER if graph == DECODER_MERGED else graph][1])
            names = [node.name for node in session.get_outputs()]
            if names != expected_names:
                from hatch_onnx.errors import OutputMismatchError

                raise OutputMismatchError(f"{graph}: outputs {names}, expected {expected_names}", output=None, value=names)
            results = dict(zip(names, session.run(names, run_feed)))
            for name, value in reference.items():
                label = f"{graph}{' (with past)' if graph == DECODER_MERGED and traced == DECODER_WITH_PAST else ''}"
                figures[f"{label}:{name}" if graph == DECODER_MERGED else name] = compare_output(
                    config, feed, name, np.asarray(value), np.asarray(results[name]), Tolerance(atol=atol), f"{label}: ")
        report["graphs"][graph] = {
            "inputs": [describe(node) for node in session.get_inputs()],
            "outputs": [describe(node) for node in session.get_outputs()],
            "max_abs_diff": max(f["max_abs_diff"] for f in figures.values()),
        }
    started = time.perf_counter()
    report["generation"] = validate_chain(folder, model, config, Tolerance(atol=atol))
    if timings is not None:
        timings["generate"] = time.perf_counter() - started
    return report


def merged_feed(config: Any, feed: Mapping[str, Any], use_cache: bool) -> dict[str, Any]:
    """A decoder's inputs as the merged graph takes them: the flag, and empty stand-ins for what the branch does not read."""
    import numpy as np

    out = dict(feed)
    batch = feed["input_ids"].shape[0]
    if use_cache:  # encoder_hidden_states: not read by the with-past branch
        enc = feed["encoder_attention_mask"].shape[1]
        hidden = int(getattr(config._config, "d_model", None) or config._config.hidden_size)
        out["encoder_hidden_states"] = np.zeros((batch, enc, hidden), dtype=np.float32)
    else:  # the past: length 0
        for name in cache_names(config, "inputs"):
            out[name] = np.zeros(config._past_shape(batch, 0), dtype=np.float32)
    out[USE_CACHE_BRANCH] = np.array([use_cache])
    return out


# --- the chain, by generation (hatch_onnx.generation's prompts, steps and rules) ---------------


def generate_onnx(encoder: Any, decoder: Any, config: Any, input_ids: Any, attention_mask: Any, new_tokens: int,
                          start: int, with_past: Any = None) -> tuple[Any, Any]:
    """Greedy decoding through the set: the encoder once, then ``decoder`` (the merged graph) at every step,
    or, with ``with_past``, ``decoder`` (the first-step graph) then ``with_past``. Returns (tokens, logits per step)."""
    import numpy as np

    batch = input_ids.shape[0]
    hidden = encoder.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
    step_ids = np.full((batch, 1), start, dtype=np.int64)
    merged = any(node.name == USE_CACHE_BRANCH for node in decoder.get_inputs())
    cache: dict[str, Any] = {}
    tokens, logits = [], []
    for step in range(new_tokens):
        feed = {"encoder_attention_mask": attention_mask, "input_ids": step_ids}
        if step == 0:
            feed["encoder_hidden_states"] = hidden
            session = decoder
            if merged:
                feed = merged_feed(config, feed, use_cache=False)
                feed["encoder_hidden_states"] = hidden
        else:
            feed.update(cache)
            session = decoder if with_past is None else with_past
            if merged:
                feed = {**merged_feed(config, feed, use_cache=True), **cache}
        names = [node.name for node in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, feed)))
        last = np.asarray(outputs["logits"])[:, -1].astype(np.float32)
        chosen = last.argmax(-1).astype(np.int64)
        tokens.append(chosen)
        logits.append(last)
        for name, value in outputs.items():
            if name.startswith("present."):
                cache[name.replace("present", "past_key_values", 1)] = value
        step_ids = chosen[:, None]
    return np.stack(tokens, axis=1), np.stack(logits)


def validate_chain(folder: Path, model: Any, config: Any, tolerance: Any) -> dict[str, Any]:
    """The set generates what ``model.generate`` does: through encoder + merged decoder, and encoder + the two decoders.

    Same prompts, steps and rules as :func:`hatch_onnx.generation.validate_generation` (decoder-only); the figures are the
    merged chain's, and the two-decoder chain must choose the same tokens.
    """
    import numpy as np

    from hatch_onnx.frameworks import backend_of
    from hatch_onnx.generation import NEW_TOKENS, _compare_steps, pad_token_id, prompts
    from hatch_onnx.validation import open_session

    folder = Path(folder)
    input_ids, mask = prompts(config)
    from hatch_onnx.config import decoder_start_token_id

    start = int(decoder_start_token_id(model.config))
    expected_tokens, expected_logits = backend_of(model).greedy_reference(model, config, input_ids, mask, NEW_TOKENS, pad_token_id(config))
    sessions = {name: open_session(folder / name, name) for name in (ENCODER, DECODER, DECODER_WITH_PAST, DECODER_MERGED)}
    tokens, logits = generate_onnx(sessions[ENCODER], sessions[DECODER_MERGED], config, input_ids, mask, NEW_TOKENS, start)
    figures = _compare_steps(tokens, logits, expected_tokens, expected_logits, tolerance, "generation (encoder + merged decoder)", False)
    apart, _ = generate_onnx(sessions[ENCODER], sessions[DECODER], config, input_ids, mask, NEW_TOKENS, start,
                                     with_past=sessions[DECODER_WITH_PAST])
    steps = figures["steps"]
    if "failure" not in figures and not np.array_equal(apart[:, :steps], tokens[:, :steps]):
        figures["failure"] = "generation: decoder_model + decoder_with_past_model choose other tokens than decoder_model_merged"
        figures["tokens_equal"] = False
    if "failure" in figures:
        from hatch_onnx.errors import GenerationError

        raise GenerationError(figures["failure"], output="logits", value=figures)
    return figures
