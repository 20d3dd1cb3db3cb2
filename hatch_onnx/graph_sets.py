"""The graph set of an encoder-decoder with past: the graphs generation needs, as consumers name them.

A ``-with-past`` feature as one graph is a single decoding step: it takes the encoder's
cross-attention cache, which no graph produced. A set that generates is four graphs, with the
names and inputs Optimum's ``ORTModelForSeq2SeqLM`` / ``ORTModelForSpeechSeq2Seq`` /
``ORTModelForVision2Seq`` and transformers.js's text2text-generation, automatic-speech-recognition
and image-to-text look for:

=============================  =========================================================================
``encoder_model.onnx``         the encoder's inputs (:attr:`Kind.encoder_inputs`) -> ``last_hidden_state``
``decoder_model.onnx``         the first step: [``encoder_attention_mask``], ``input_ids``,
                               ``encoder_hidden_states`` -> the head output (:attr:`Kind.head`) and the
                               whole present cache
``decoder_with_past_model``    a later step: [``encoder_attention_mask``], ``input_ids``, the past ->
                               the head output and the self-attention cache (a cross cache is fixed)
``decoder_model_merged.onnx``  both decoders in one graph: ``use_cache_branch`` picks an ONNX ``If``
                               branch; the two share their weights (deduplicated by content); its
                               with-past branch passes the encoder cache through, so both return
                               the same outputs
=============================  =========================================================================

What differs between families is a :class:`Kind` (one per family and feature, :data:`KINDS`):

=====================================  ==================  ====  ==================  ==========  ===========
families, feature                      encoder inputs      mask  head output         cache       chain check
=====================================  ==================  ====  ==================  ==========  ===========
text (t5 ... bigbird-pegasus),         ``input_ids``,      yes   ``logits``          cross       generate
``seq2seq-lm-with-past``               ``attention_mask``
text, ``default-with-past``            same                yes   ``last_hidden_state``  cross    teacher-forced
whisper, ``speech2seq-lm-with-past``   ``input_features``  no    ``logits``          cross       greedy loop
whisper, ``default-with-past``         ``input_features``  no    ``last_hidden_state``  cross    teacher-forced
vision-encoder-decoder,                ``pixel_values``    no    ``logits``          self only   greedy loop
``vision2seq-lm-with-past``
=====================================  ==================  ====  ==================  ==========  ===========

"mask": the decoders take ``encoder_attention_mask`` (Whisper's and the image encoder's outputs
have no padding; Optimum's exports of those take none). "cache": ``cross`` is
``past_key_values.{i}.decoder|encoder.key|value`` (the encoder's keys and values computed at
the first step, then carried); ``self only`` is the decoder-only naming of the decoder's own
cache, ``past_key_values.{i}.key|value``, as Optimum and transformers.js expect of a
vision-encoder-decoder with a GPT-2 decoder: every step takes ``encoder_hidden_states`` and
recomputes cross-attention from it.

Each graph is validated on its own against the model at other shapes than the export's,
and the chain (encoder, then the merged decoder, and the two decoders apart) through onnxruntime
alone (:func:`validate_chain`, by :mod:`hatch_onnx.generation`'s steps and rules):

- *generate*: the text families' prompts (batch 2, left-padded), decoded greedily through the
  graphs, then checked step by step against one forward of the model over the start token and
  the chosen tokens, without a cache (each back-end's ``sequence_reference``): logits within
  atol, and each token the model's argmax after the same prefix, which makes the sequence
  transformers' greedy ``generate``'s (:mod:`hatch_onnx.generation`);
- *greedy loop*: seeded audio features or pixels (batch 2), checked the same way. The reference
  is the model's plain greedy decoding, not ``generate``: Whisper's overrides it with forced
  language and task tokens, suppressed tokens and timestamp rules, which are generation policy,
  not what the graphs compute. The model's pass uses no cache, so it also checks the graphs'
  cache path independently;
- *teacher-forced*: a ``default-with-past`` graph returns hidden states, from which no token can
  be chosen: a seeded token sequence is fed step by step (the first step with
  ``use_cache_branch`` False, then True) and every step's last hidden state is compared with one
  forward of the model over the whole sequence (``sequence_reference`` again).
  ``tokens_equal`` is None there, and ``tokens_compared`` says why.

PyTorch's graphs are traced here (the TorchScript exporter, named explicitly); TensorFlow's by its back-end
(``export_graph_set``, ``graph_set_reference`` in :mod:`hatch_onnx.frameworks.tensorflow`, tf2onnx) from the same
interfaces and export inputs; the merge, validation and chain are the same. Heavy imports inside functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from hatch_onnx.layouts import GRAPH_SET as GRAPHS

ENCODER, DECODER, DECODER_WITH_PAST, DECODER_MERGED = GRAPHS


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one family's set is made for one feature (see the table above)."""

    encoder_inputs: tuple[str, ...]
    # The decoders take encoder_attention_mask (the encoder's padding).
    encoder_mask: bool
    # The decoders' first output: logits (an LM head) or last_hidden_state (default-with-past).
    head: str
    # The cache carries the encoder's keys and values (past_key_values.{i}.decoder|encoder.*); False:
    # the decoder's own cache only, named as a decoder-only model's, and encoder_hidden_states every step.
    cross_cache: bool
    # How the chain is checked: "generate", "greedy-loop" or "teacher-forced".
    chain: str


TEXT_FAMILIES = frozenset({"t5", "mt5", "longt5", "bart", "mbart", "marian", "m2m-100", "blenderbot", "blenderbot-small", "bigbird-pegasus"})
_TEXT = ("input_ids", "attention_mask")
KINDS: Mapping[tuple[str, str], Kind] = {
    **{(family, "seq2seq-lm-with-past"): Kind(_TEXT, True, "logits", True, "generate") for family in TEXT_FAMILIES},
    **{(family, "default-with-past"): Kind(_TEXT, True, "last_hidden_state", True, "teacher-forced") for family in TEXT_FAMILIES},
    ("whisper", "speech2seq-lm-with-past"): Kind(("input_features",), False, "logits", True, "greedy-loop"),
    ("whisper", "default-with-past"): Kind(("input_features",), False, "last_hidden_state", True, "teacher-forced"),
    ("vision-encoder-decoder", "vision2seq-lm-with-past"): Kind(("pixel_values",), False, "logits", False, "greedy-loop"),
}
FEATURES = frozenset(feature for _, feature in KINDS)
# Part of the cache key of the jobs that make a set: changing how sets are made re-makes them.
VERSION = 2


def applies(model_type: str, feature: str, framework: str) -> bool:
    """Whether an export of ``feature`` also writes the graph set: the pairs of :data:`KINDS` from PyTorch; from
    TensorFlow, the text families' and Whisper's (traced by its back-end's ``export_graph_set``; the
    vision-encoder-decoder's TF class has no feature with past)."""
    kind = KINDS.get((model_type, feature))
    return kind is not None and (framework == "pt" or (framework == "tf" and kind.encoder_inputs in _TF_ENCODER_INPUTS))


# The encoder inputs TensorFlow's back-end traces a set's encoder from.
_TF_ENCODER_INPUTS = frozenset({_TEXT, ("input_features",)})


def kind_of(config: Any) -> Kind:
    """The :class:`Kind` of an ONNX config with past (its model type and task)."""
    return KINDS[(config._config.model_type.replace("_", "-"), f"{config.task}-with-past")]  # m2m_100 -> m2m-100


USE_CACHE_BRANCH = "use_cache_branch"
# Export shapes, and validation's: every dynamic axis at another size.
EXPORT_SHAPES = {"batch": 2, "encoder": 8, "decoder": 3, "past": 4}
VALIDATION_SHAPES = {"batch": 3, "encoder": 11, "decoder": 2, "past": 6}


def cache_names(config: Any, direction: str, parts: Optional[tuple[str, ...]] = None) -> list[str]:
    """``past_key_values.{i}[.{part}].{kind}`` (inputs) or ``present.…`` (outputs), layer by layer.

    ``parts`` None: the kind's whole cache (decoder and encoder parts, or the unprefixed self cache).
    """
    prefix = "past_key_values" if direction == "inputs" else "present"
    if parts is None:
        parts = ("decoder", "encoder") if kind_of(config).cross_cache else ("",)
    return [f"{prefix}.{i}.{part + '.' if part else ''}{kind}" for i in range(config.num_layers) for part in parts
            for kind in ("key", "value")]


def _self_parts(config: Any) -> tuple[str, ...]:
    return ("decoder",) if kind_of(config).cross_cache else ("",)


def _is_cross(name: str) -> bool:
    return ".encoder." in name


def encoder_hidden_size(config: Any) -> int:
    """The width of ``encoder_hidden_states`` the decoder graphs take (the image encoder's own, for vision-encoder-decoder)."""
    model_config = config._config
    encoder = getattr(model_config, "encoder", None)
    if encoder is not None and not isinstance(encoder, (bool, int)) and hasattr(encoder, "hidden_size"):
        return int(encoder.hidden_size)
    return int(getattr(model_config, "d_model", None) or model_config.hidden_size)


def interfaces(config: Any) -> dict[str, tuple[dict[str, dict[int, str]], dict[str, dict[int, str]]]]:
    """Each exported graph's (inputs, outputs) with their named dynamic axes, in order."""
    kind = kind_of(config)
    batch, enc, dec, past = "batch_size", "encoder_sequence_length", "decoder_sequence_length", "past_decoder_sequence_length"
    presents_self = {name: {0: batch, 2: "decoder_total_length"} for name in cache_names(config, "outputs", _self_parts(config))}
    cache_in = {}
    for name in cache_names(config, "inputs"):
        cache_in[name] = {0: batch, 2: "encoder_sequence_length_out" if _is_cross(name) else past}
    presents_all = {}
    for name in cache_names(config, "outputs"):
        presents_all[name] = {0: batch, 2: "encoder_sequence_length_out" if _is_cross(name) else "decoder_total_length"}
    encoder_in = {name: {0: batch, 1: enc} if name in _TEXT else {0: batch} for name in kind.encoder_inputs}
    mask = {"encoder_attention_mask": {0: batch, 1: enc}} if kind.encoder_mask else {}
    hidden = {"encoder_hidden_states": {0: batch, 1: enc}}
    head = {kind.head: {0: batch, 1: dec}}
    ids = {"input_ids": {0: batch, 1: dec}}
    return {
        ENCODER: (encoder_in, {"last_hidden_state": {0: batch, 1: enc}}),
        DECODER: ({**mask, **ids, **hidden}, {**head, **presents_all}),
        DECODER_WITH_PAST: ({**mask, **ids, **({} if kind.cross_cache else hidden), **cache_in}, {**head, **presents_self}),
    }


def _modules(model: Any, kind: Kind) -> dict[str, Any]:
    """The three PyTorch callables the graphs are traced from, each ``forward(*inputs) -> tuple``."""
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    from hatch_onnx.frameworks.pytorch import _cache_argument, _cache_from_flat, _encoder_placeholder, _present, _returned_cache

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> tuple:
            named = dict(zip(kind.encoder_inputs, tensors))
            return (self.model.get_encoder()(**named, return_dict=True).last_hidden_state,)

    class Decoder(torch.nn.Module):
        def __init__(self, input_names: list[str], output_names: list[str], with_past: bool) -> None:
            super().__init__()
            self.model, self.input_names, self.output_names, self.with_past = model, input_names, output_names, with_past
            self.cache_argument = _cache_argument(model)

        def forward(self, *tensors: Any) -> tuple:
            named = dict(zip(self.input_names, tensors))
            kwargs: dict[str, Any] = {"decoder_input_ids": named["input_ids"], "use_cache": True, "return_dict": True}
            if kind.encoder_mask:
                kwargs["attention_mask"] = named["encoder_attention_mask"]
            if "encoder_hidden_states" in named:
                kwargs["encoder_outputs"] = BaseModelOutput(last_hidden_state=named["encoder_hidden_states"])
            if self.with_past:
                cache = _cache_from_flat(named)
                if kind.cross_cache:
                    kwargs["encoder_outputs"] = _encoder_placeholder(self.model, cache)
                else:  # cross-attention recomputed from encoder_hidden_states: an empty cross cache
                    cache = EncoderDecoderCache(cache, DynamicCache())
                kwargs[self.cache_argument] = cache
            out = self.model(**kwargs)
            cache = _returned_cache(out)
            return (out[kind.head], *(_present(cache, name) for name in self.output_names[1:]))

    return {"encoder": Encoder, "decoder": Decoder}


def _module(model: Any, config: Any, graph: str) -> Any:
    classes = _modules(model, kind_of(config))
    if graph == ENCODER:
        return classes["encoder"]()
    names_in, names_out = interfaces(config)[graph]
    return classes["decoder"](list(names_in), list(names_out), graph == DECODER_WITH_PAST)


def encoder_inputs(config: Any, batch: int, rng: Any, encoder_length: int) -> dict[str, Any]:
    """Seeded inputs of the encoder: token ids and a mask (the second row padded on the left by 2),
    audio features at the length Whisper takes, or pixels at the image size."""
    import numpy as np

    kind, model_config = kind_of(config), config._config
    if kind.encoder_inputs == _TEXT:
        mask = np.ones((batch, encoder_length), dtype=np.int64)
        mask[1, :2] = 0
        return {"input_ids": config._random_token_ids(rng, (batch, encoder_length)), "attention_mask": mask}
    if kind.encoder_inputs == ("input_features",):
        shape = (batch, int(model_config.num_mel_bins), 2 * int(model_config.max_source_positions))
        return {"input_features": rng.standard_normal(shape, dtype=np.float32)}
    vision = model_config.encoder
    size = vision.image_size if isinstance(vision.image_size, (list, tuple)) else (vision.image_size, vision.image_size)
    return {"pixel_values": rng.standard_normal((batch, int(getattr(vision, "num_channels", 3)), *map(int, size)), dtype=np.float32)}


def dummy_inputs(config: Any, graph: str, shapes: Mapping[str, int], seed: int) -> dict[str, Any]:
    """Seeded inputs of ``graph`` at ``shapes`` (numpy); an encoder mask's second row padded on the left by 2."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kind = kind_of(config)
    batch, enc, dec, past = shapes["batch"], shapes["encoder"], shapes["decoder"], shapes["past"]
    if graph == ENCODER:
        return encoder_inputs(config, batch, rng, enc)
    inputs: dict[str, Any] = {}
    if kind.encoder_mask:
        mask = np.ones((batch, enc), dtype=np.int64)
        mask[1, :2] = 0
        inputs["encoder_attention_mask"] = mask
    hidden = rng.standard_normal((batch, enc, encoder_hidden_size(config)), dtype=np.float32)
    if graph == DECODER:
        inputs["input_ids"] = config._random_token_ids(rng, (batch, dec))
        inputs["encoder_hidden_states"] = hidden
        return inputs
    inputs["input_ids"] = config._random_token_ids(rng, (batch, 1))
    if not kind.cross_cache:
        inputs["encoder_hidden_states"] = hidden
    for name in cache_names(config, "inputs"):
        inputs[name] = rng.standard_normal(config._past_shape(batch, enc if _is_cross(name) else past), dtype=np.float32)
    return inputs


def export_set(model: Any, config: Any, opset: int, folder: Path) -> dict[str, list[str]]:
    """Write the four graphs into ``folder``; returns each graph's output names."""
    tracer = _tracing_backend(model)
    if tracer is not None:
        dummies = {graph: dummy_inputs(config, graph, EXPORT_SHAPES, config.DUMMY_SEED) for graph in interfaces(config)}
        written = tracer.export_graph_set(model, config, opset, folder, interfaces(config), dummies)
        merge_decoders(folder / DECODER, folder / DECODER_WITH_PAST, folder / DECODER_MERGED)
        return {**written, DECODER_MERGED: written[DECODER]}
    import warnings

    import torch

    from hatch_onnx.frameworks.pytorch import _export_torchscript, patched, prepare_model, torch_patches, transformers_patches

    model = prepare_model(model, config)
    written = {}
    for graph, (inputs, outputs) in interfaces(config).items():
        names_in, names_out = list(inputs), list(outputs)
        module = _module(model, config, graph)
        args = tuple(torch.from_numpy(value) for value in dummy_inputs(config, graph, EXPORT_SHAPES, config.DUMMY_SEED).values())
        axes = {name: dict(value) for name, value in {**inputs, **outputs}.items()}
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
    source = DECODER if graph == DECODER_MERGED else graph
    module = _module(model, config, source)
    names_out = list(interfaces(config)[source][1])
    with torch.no_grad():
        outputs = module(*(torch.from_numpy(value) for value in inputs.values()))
    return {name: value.numpy() for name, value in zip(names_out, outputs)}


def validate_set(folder: Path, model: Any, config: Any, atol: float, timings: Optional[dict] = None) -> dict[str, Any]:
    """Each graph on its own (at other shapes than the export's), then the chain (its seconds in ``timings``)."""
    import numpy as np

    from hatch_onnx.errors import OutputMismatchError
    from hatch_onnx.validation import Tolerance, compare_output, describe, open_session

    report: dict[str, Any] = {"atol": atol, "graphs": {}}
    seed = config.DUMMY_SEED + 1
    for graph in GRAPHS:
        session = open_session(folder / graph, graph)
        if graph == DECODER_MERGED:  # both branches, each against the module its branch was traced from
            checks = [(dummy_inputs(config, source, VALIDATION_SHAPES, seed), source) for source in (DECODER, DECODER_WITH_PAST)]
        else:
            checks = [(dummy_inputs(config, graph, VALIDATION_SHAPES, seed), graph)]
        expected_names = list(interfaces(config)[DECODER if graph == DECODER_MERGED else graph][1])
        names = [node.name for node in session.get_outputs()]
        if names != expected_names:
            raise OutputMismatchError(f"{graph}: outputs {names}, expected {expected_names}", output=None, value=names)
        figures: dict[str, Any] = {}
        for feed, traced in checks:
            reference = reference_outputs(model, config, traced, feed)
            run_feed = merged_feed(config, feed, use_cache=traced == DECODER_WITH_PAST) if graph == DECODER_MERGED else dict(feed)
            results = dict(zip(names, session.run(names, run_feed)))
            label = f"{graph}{' (with past)' if graph == DECODER_MERGED and traced == DECODER_WITH_PAST else ''}"
            for name, value in reference.items():
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
    if use_cache and "encoder_hidden_states" not in out:  # a cross cache: the with-past branch does not read them
        cross = next(value for name, value in feed.items() if _is_cross(name))
        out["encoder_hidden_states"] = np.zeros((batch, cross.shape[2], encoder_hidden_size(config)), dtype=np.float32)
    if not use_cache:  # the past: length 0
        for name in cache_names(config, "inputs"):
            out[name] = np.zeros(config._past_shape(batch, 0), dtype=np.float32)
    out[USE_CACHE_BRANCH] = np.array([use_cache])
    return out


# --- the chain, through onnxruntime alone (hatch_onnx.generation's steps and rules) ------------


def generate_onnx(encoder: Any, decoder: Any, config: Any, encoder_feed: Mapping[str, Any], new_tokens: int, start: int,
                  with_past: Any = None, forced: Any = None) -> tuple[Any, Any]:
    """Greedy decoding through the set: the encoder once, then ``decoder`` (the merged graph) at every step,
    or, with ``with_past``, ``decoder`` (the first-step graph) then ``with_past``.

    ``forced`` (batch, n): feed these tokens instead of the graph's choices (teacher forcing, for
    graphs whose head is hidden states). Returns (tokens, the head's last position per step).
    """
    import numpy as np

    kind = kind_of(config)
    hidden = encoder.run(None, dict(encoder_feed))[0]
    batch = hidden.shape[0]
    step_ids = np.full((batch, 1), start, dtype=np.int64)
    merged = any(node.name == USE_CACHE_BRANCH for node in decoder.get_inputs())
    cache: dict[str, Any] = {}
    tokens, heads = [], []
    for step in range(new_tokens):
        feed = {"input_ids": step_ids, "encoder_hidden_states": hidden}
        if kind.encoder_mask:
            feed["encoder_attention_mask"] = encoder_feed["attention_mask"]
        session = decoder if step == 0 or with_past is None else with_past
        if step > 0:
            feed.update(cache)
        if merged:
            feed = {**merged_feed(config, feed, use_cache=step > 0), "encoder_hidden_states": hidden, **cache}
        declared = {node.name for node in session.get_inputs()}
        names = [node.name for node in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, {name: value for name, value in feed.items() if name in declared})))
        last = np.asarray(outputs[kind.head])[:, -1].astype(np.float32)
        chosen = last.argmax(-1).astype(np.int64) if forced is None else np.asarray(forced)[:, step]
        tokens.append(chosen)
        heads.append(last)
        for name, value in outputs.items():
            if name.startswith("present."):
                cache[name.replace("present", "past_key_values", 1)] = value
        step_ids = chosen[:, None]
    return np.stack(tokens, axis=1), np.stack(heads)


_FRAMEWORK_NAMES = {"pt": "PyTorch", "tf": "TensorFlow"}


def _chain_inputs(config: Any) -> dict[str, Any]:
    """The encoder's inputs of the chain: the text prompts of :mod:`hatch_onnx.generation`, or seeded features or pixels (batch 2)."""
    import numpy as np

    from hatch_onnx.generation import GENERATION_SEED_OFFSET, PROMPT_LENGTHS, prompts

    if kind_of(config).encoder_inputs == _TEXT:
        input_ids, mask = prompts(config)
        return {"input_ids": input_ids, "attention_mask": mask}
    rng = np.random.default_rng(config.DUMMY_SEED + GENERATION_SEED_OFFSET)
    return encoder_inputs(config, len(PROMPT_LENGTHS), rng, 0)


def validate_chain(folder: Path, model: Any, config: Any, tolerance: Any) -> dict[str, Any]:
    """The set decodes what the model does: through encoder + merged decoder, and encoder + the two decoders.

    By the kind's check (the module's docstring): ``generate`` and ``greedy-loop`` decode greedily,
    then one forward of the model over the chosen tokens checks every step; ``teacher-forced``
    hidden states against one forward of the model. Same steps and rules as
    :func:`hatch_onnx.generation.validate_generation`; the figures are the merged chain's, and the
    two-decoder chain must agree with it.
    """
    import numpy as np

    from hatch_onnx.config import decoder_start_token_id
    from hatch_onnx.errors import GenerationError
    from hatch_onnx.generation import NEW_TOKENS, _compare_steps
    from hatch_onnx.validation import open_session

    folder = Path(folder)
    kind = kind_of(config)
    feed = _chain_inputs(config)
    start = int(decoder_start_token_id(model.config))
    sessions = {name: open_session(folder / name, name) for name in (ENCODER, DECODER, DECODER_WITH_PAST, DECODER_MERGED)}
    if kind.chain == "teacher-forced":
        return _validate_teacher_forced(sessions, model, config, feed, start, tolerance)
    from hatch_onnx.frameworks import backend_of

    backend = backend_of(model)
    tokens, logits = generate_onnx(sessions[ENCODER], sessions[DECODER_MERGED], config, feed, NEW_TOKENS, start)
    # The model reads the start token and every token the chain chose but the last, in one pass (hatch_onnx.generation.model_steps)
    sequence = np.concatenate([np.full((tokens.shape[0], 1), start, dtype=np.int64), tokens[:, :-1]], axis=1)
    expected_logits = backend.sequence_reference(model, config, {**feed, "decoder_input_ids": sequence}, "logits").transpose(1, 0, 2)
    figures = _compare_steps(tokens, logits, expected_logits.argmax(-1).T, expected_logits, tolerance,
                             "generation (encoder + merged decoder)", False)
    figures["mode"] = kind.chain
    figures["reference"] = f"one {_FRAMEWORK_NAMES[backend.FRAMEWORK]} pass over the chosen tokens, no cache"
    if kind.chain != "generate":  # no prompts: the encoder's input instead
        figures.pop("prompt_lengths", None)
        figures["encoder_input"] = {name: list(value.shape) for name, value in feed.items()}
    apart, _ = generate_onnx(sessions[ENCODER], sessions[DECODER], config, feed, NEW_TOKENS, start, with_past=sessions[DECODER_WITH_PAST])
    steps = figures["steps"]
    if "failure" not in figures and not np.array_equal(apart[:, :steps], tokens[:, :steps]):
        figures["failure"] = "generation: decoder_model + decoder_with_past_model choose other tokens than decoder_model_merged"
        figures["tokens_equal"] = False
    if "failure" in figures:
        raise GenerationError(figures["failure"], output="logits", value=figures)
    return figures


def _validate_teacher_forced(sessions: Mapping[str, Any], model: Any, config: Any, feed: Mapping[str, Any], start: int,
                             tolerance: Any) -> dict[str, Any]:
    """Hidden states step by step (a seeded token sequence fed), against one forward of the model over the whole sequence."""
    import numpy as np

    from hatch_onnx.errors import GenerationError
    from hatch_onnx.frameworks import backend_of
    from hatch_onnx.generation import NEW_TOKENS, PROMPT_LENGTHS, forced_tokens

    batch = len(PROMPT_LENGTHS)
    forced = forced_tokens(config)  # the decoder-only check's tokens (hatch_onnx.generation)
    sequence = np.concatenate([np.full((batch, 1), start, dtype=np.int64), forced[:, :-1]], axis=1)
    expected = backend_of(model).sequence_reference(model, config, {**feed, "decoder_input_ids": sequence}, "last_hidden_state")
    _, merged = generate_onnx(sessions[ENCODER], sessions[DECODER_MERGED], config, feed, NEW_TOKENS, start, forced=forced)
    _, apart = generate_onnx(sessions[ENCODER], sessions[DECODER], config, feed, NEW_TOKENS, start,
                             with_past=sessions[DECODER_WITH_PAST], forced=forced)
    figures: dict[str, Any] = {
        "batch": batch, "new_tokens": NEW_TOKENS, "mode": "teacher-forced", "output": "last_hidden_state",
        "encoder_input": {name: list(np.shape(value)) for name, value in feed.items()},
        "tokens_equal": None,
        "tokens_compared": "n/a: the graphs return hidden states, no token is chosen; a seeded token sequence is fed",
        "atol": tolerance.atol,
    }
    worst, steps, failure = 0.0, 0, None
    for step in range(NEW_TOKENS):
        reference = expected[:, step].astype(np.float64)
        for label, result in (("encoder + merged decoder", merged), ("decoder_model + decoder_with_past_model", apart)):
            diff = float(np.abs(reference - result[step].astype(np.float64)).max()) if not np.isnan(result[step]).any() else float("inf")
            worst = max(worst, diff)
            if failure is None and not diff <= tolerance.atol:
                failure = f"teacher-forced chain ({label}): step {step}: last_hidden_state differs by {diff:.3g}, beyond {tolerance.atol:g}"
        if failure is not None:
            break
        steps = step + 1
    figures.update({"steps": steps, "max_diff": worst})
    if failure is not None:
        figures["failure"] = failure
        raise GenerationError(failure, output="last_hidden_state", value=figures)
    return figures
