"""Decoder graphs at run time: session creation, prefill and per-token decode in plain onnxruntime.

    python bench/decode.py GRAPH [GRAPH ...]
    python bench/decode.py --checkpoint DIR [--variants o2 int4 ...] [--genai-python PYTHON] [--exporter torchscript|fused|genai]

With graphs, each is measured as it is. With ``--checkpoint`` (a causal LM, e.g.
``bench/large.py``'s random Qwen2.5-0.5B), the checkpoint is first exported by ``hatch-onnx
build`` (``causal-lm-with-past`` and the ``--variants``, into ``bench/.work/decode/``), and, when
onnxruntime-genai's model builder runs in ``--genai-python`` (default: this interpreter; it needs
transformers 5), built by it in fp32 and int4 for CPU: the baseline of the same run.
``--exporter genai`` exports with hatch-onnx's ``exporter: genai`` (the same builder, then our
validation and generation check): its row's build seconds are the whole export (builder +
validation), with the export's peak memory (``wait4``) against the weights on disk. The
builder loads a tokenizer: a checkpoint without one (bench/large.py's random ones) is seen
through a folder of links to its files plus the tiny Qwen2 fixture's tokenizer (its ids are
never used: the graphs take token ids).

Every graph is measured in a fresh process (one at a time, so that they do not compete for the
cores), through the same loop: the decoder interface of Optimum, transformers.js, genai and
hatch-onnx alike (``input_ids``, ``attention_mask``, optional ``position_ids``,
``past_key_values.N.key|value`` in, ``logits`` and ``present.N.key|value`` out), greedy,
batch 1. Figures: session creation (median of 3 fresh sessions), prefill of ``--prompt`` tokens
(median of 3) and decode per token (median over ``--steps`` steps after the prefill), graph nodes
and bytes on disk (with external data), and the tokens each graph chose, which must agree
between graphs of one checkpoint in full precision.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "decode"


# --- one graph, in its own process ------------------------------------------------------------

def _cache_shape(graph: Path, session) -> tuple[int, int]:
    """(kv heads, head size) from the graph's past inputs, else the folder's genai_config.json or config.json."""
    past = next(i for i in session.get_inputs() if i.name.startswith("past_key_values."))
    if isinstance(past.shape[1], int) and isinstance(past.shape[3], int):
        return past.shape[1], past.shape[3]
    genai = graph.parent / "genai_config.json"
    if genai.is_file():
        decoder = json.loads(genai.read_text())["model"]["decoder"]
        return decoder["num_key_value_heads"], decoder["head_size"]
    config = json.loads((graph.parent / "config.json").read_text())
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    return heads, config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _vocab_size(graph: Path) -> int:
    genai = graph.parent / "genai_config.json"
    if genai.is_file():
        return json.loads(genai.read_text())["model"]["vocab_size"]
    return json.loads((graph.parent / "config.json").read_text())["vocab_size"]


def measure_graph(graph: Path, prompt: int, steps: int) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort

    def new_session():
        options = ort.SessionOptions()
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    creation = []
    for _ in range(3):
        started = time.perf_counter()
        session = new_session()
        creation.append(time.perf_counter() - started)
    names = {i.name: i for i in session.get_inputs()}
    heads, head_size = _cache_shape(graph, session)
    past_names = [n for n in names if n.startswith("past_key_values.")]
    cache_dtype = np.float16 if names[past_names[0]].type == "tensor(float16)" else np.float32
    outputs = [o.name for o in session.get_outputs()]

    def feeds(tokens, past, past_length):
        length = tokens.shape[1]
        feed = {"input_ids": tokens.astype(np.int64), "attention_mask": np.ones((1, past_length + length), np.int64)}
        if "position_ids" in names:
            feed["position_ids"] = np.arange(past_length, past_length + length, dtype=np.int64)[None]
        feed.update(past)
        return {k: v for k, v in feed.items() if k in names}

    empty = {n: np.zeros((1, heads, 0, head_size), cache_dtype) for n in past_names}
    tokens = np.random.default_rng(0).integers(0, min(_vocab_size(graph), 32000), size=(1, prompt))
    prefill = []
    for _ in range(3):
        started = time.perf_counter()
        result = session.run(outputs, feeds(tokens, empty, 0))
        prefill.append(time.perf_counter() - started)
    named = dict(zip(outputs, result))
    chosen = [int(named["logits"][0, -1].argmax())]
    past = {n.replace("present.", "past_key_values.", 1): v for n, v in named.items() if n.startswith("present.")}
    per_token = []
    for step in range(steps):
        started = time.perf_counter()
        result = session.run(outputs, feeds(np.array([[chosen[-1]]]), past, prompt + step))
        per_token.append(time.perf_counter() - started)
        named = dict(zip(outputs, result))
        chosen.append(int(named["logits"][0, -1].argmax()))
        past = {n.replace("present.", "past_key_values.", 1): v for n, v in named.items() if n.startswith("present.")}
    model = onnx.load(str(graph), load_external_data=False)
    data = graph.with_name(graph.name + ".data")  # external data, as hatch-onnx and genai name it
    size = graph.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    return {"graph": str(graph), "bytes": size, "nodes": len(model.graph.node), "session_s": statistics.median(creation),
            "prefill_ms": 1000 * statistics.median(prefill), "decode_ms": 1000 * statistics.median(per_token), "tokens": chosen}


def measure(graph: Path, prompt: int, steps: int) -> dict | None:
    """:func:`measure_graph` in a fresh process (this file, ``--one``), with its peak memory."""
    command = [sys.executable, __file__, "--one", str(graph), "--prompt", str(prompt), "--steps", str(steps)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    out, err = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        last = [line for line in err.strip().splitlines() if line.strip()][-1:] or ["no output"]
        print(f"note: {graph} did not run: {last[0][:300]}", file=sys.stderr)
        return None
    return {**json.loads(out.strip().splitlines()[-1]), "peak_gib": usage.ru_maxrss * 1024 / 2**30}


# --- graphs of a checkpoint --------------------------------------------------------------------

def with_tokenizer(checkpoint: Path) -> Path:
    """``checkpoint``, or a folder of links to its files plus a fixture tokenizer when it has none (genai's builder loads one)."""
    if (checkpoint / "tokenizer.json").is_file() or (checkpoint / "tokenizer_config.json").is_file():
        return checkpoint
    view = WORK / f"{checkpoint.name}-with-tokenizer"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for path in checkpoint.iterdir():
        (view / path.name).symlink_to(path.resolve())
    fixture = HERE.parent / "fixtures" / "checkpoints" / "qwen2-tiny"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(fixture / name, view / name)
    return view


def hatch_onnx_graphs(checkpoint: Path, variants: list[str], exporter: "str | None" = None) -> list[tuple[str, Path, float]]:
    """Export with ``hatch-onnx build`` (cold cache); (label, graph, wall seconds including validation) per graph."""
    import yaml

    work = WORK / "hatch-onnx"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump({"onnx": {"cache": str(work / "cache"), "models": {"decoder": {
        "checkpoint": str(checkpoint), "features": ["causal-lm-with-past"], "variants": variants,
        **({"exporter": exporter} if exporter else {})}}}}))  # none named: the default (fused for the types it writes)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), "--out", str(work / "out")],
                               env={**os.environ, "USE_TF": "0"})
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    weights = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
    peak = usage.ru_maxrss * 1024
    print(f"hatch-onnx build (exporter {exporter or 'default'}, variants {variants or 'none'}): {wall:.1f} s, exit "
          f"{os.waitstatus_to_exitcode(status)}, peak {peak / 2**30:.2f} GiB = {peak / weights:.2f}x the weights ({weights / 2**30:.2f} GiB)")
    folder = work / "out" / "decoder" / "causal-lm-with-past"
    report = folder.parents[1] / "manifest.json"
    shipped = exporter or "default"
    if report.is_file():
        entry = json.loads(report.read_text())["models"]["decoder"]["causal-lm-with-past"]
        shipped = entry["source"]["exporter"]
        print(f"  exporter {shipped}; validation: {json.dumps(entry['validation'])[:600]}")
        for name, variant in entry.get("variants", {}).items():
            print(f"  variant {name}: {json.dumps(variant['validation'])[:300]} generation {json.dumps(variant.get('generation'))[:300]}")
    label = f"hatch-onnx {shipped} fp32"
    return [(label, folder / "model.onnx", wall),
            *((f"hatch-onnx {v}", folder / f"model.{v}.onnx", float("nan")) for v in variants)]


def genai_graphs(checkpoint: Path, python: str) -> list[tuple[str, Path, float]]:
    """onnxruntime-genai's builder, fp32 and int4 for CPU; none (with a note) when it does not run in ``python``."""
    found = []
    for precision in ("fp32", "int4"):
        out = WORK / f"genai-{precision}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        built = subprocess.run([python, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
                                "-p", precision, "-e", "cpu", "-c", str(WORK / "genai-cache")],
                               capture_output=True, text=True, env={**os.environ, "USE_TF": "0"})
        if built.returncode != 0 or not (out / "model.onnx").is_file():
            last = (built.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"note: onnxruntime-genai's builder did not run in {python} ({last}); no genai baseline", file=sys.stderr)
            return found
        found.append((f"genai builder {precision}", out / "model.onnx", time.perf_counter() - started))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="*", type=Path)
    parser.add_argument("--checkpoint", type=Path, help="export this causal LM (and build it with genai) first")
    parser.add_argument("--variants", nargs="*", default=["o2"], help="hatch-onnx variants to measure with --checkpoint")
    parser.add_argument("--genai-python", default=sys.executable, help="interpreter with onnxruntime-genai and transformers 5")
    parser.add_argument("--exporter", default=None, choices=("torchscript", "dynamo", "genai", "fused"),
                        help="hatch-onnx's exporter for --checkpoint (genai: onnxruntime-genai's builder, validated by us)")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_graph(args.one, args.prompt, args.steps)))
        return
    graphs = [(str(g), g, float("nan")) for g in args.graphs]
    if args.checkpoint:
        checkpoint = with_tokenizer(args.checkpoint.resolve())
        graphs += hatch_onnx_graphs(checkpoint, args.variants, args.exporter) + genai_graphs(checkpoint, args.genai_python)
    if not graphs:
        parser.error("give graphs, or --checkpoint")
    rows = [(label, wall, r) for label, graph, wall in graphs if (r := measure(graph, args.prompt, args.steps)) is not None]
    print(f"prompt {args.prompt} tokens, {args.steps} decode steps, batch 1, CPU, {os.cpu_count()} cores")
    print(f"{'graph':<24}{'build s':>9}{'MB':>9}{'nodes':>8}{'session s':>11}{'prefill ms':>12}{'decode ms/tok':>15}{'peak GiB':>10}")
    for label, wall, r in rows:
        print(f"{label:<24}{wall:>9.1f}{r['bytes'] / 1e6:>9.1f}{r['nodes']:>8}{r['session_s']:>11.2f}{r['prefill_ms']:>12.1f}"
              f"{r['decode_ms']:>15.1f}{r['peak_gib']:>10.2f}")
    reference = rows[0][2]["tokens"]
    for label, _, r in rows[1:]:
        same = sum(a == b for a, b in zip(reference, r["tokens"]))
        print(f"tokens equal to {rows[0][0]}'s: {label} {same}/{len(reference)}")


if __name__ == "__main__":
    main()
