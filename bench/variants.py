"""Latency and size of each variant against the fp32 graph, all in onnxruntime, on a BERT-base-size model.

    python bench/variants.py [--size base|minilm] [--runs 30] [--batch 1] [--sequence 128]

Builds the random checkpoint of bench/export.py (BERT-base shape: 110M parameters; ``--size
minilm``: 22.7M) with ``variants: [o1, o2, o3, int8, fp16]`` through ``hatch-onnx build`` into a
temporary folder, then times each graph in one onnxruntime session per graph (CPU, default
threads), alternating graphs every round so that drift hits them alike, and prints one table:
size and its ratio to fp32, median latency and its ratio, and the validation figures the build
recorded (max abs diff; cosine for int8 and fp16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from export import make_checkpoint  # noqa: E402

VARIANTS = ["o1", "o2", "o3", "int8", "fp16"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("base", "minilm"), default="base")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=128)
    args = parser.parse_args()
    checkpoint = make_checkpoint(args.size)
    work = Path(tempfile.mkdtemp(prefix="hatch-onnx-variants-"))
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump({"onnx": {"cache": "cache", "models": {
        "bert": {"checkpoint": str(checkpoint), "features": ["default"], "variants": VARIANTS}}}}))
    env = {**os.environ, "USE_TF": "0"}
    env.pop("HATCH_ONNX_CACHE", None)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), "--out", str(work / "out")],
                   check=True, env=env)
    print(f"build with every variant: {time.perf_counter() - started:.1f} s")

    import numpy as np
    import onnxruntime

    entry = json.loads((work / "out" / "manifest.json").read_text())["models"]["bert"]["default"]
    graphs = {"fp32": work / "out" / entry["files"]["model.onnx"]["path"]}
    graphs.update({v: work / "out" / next(iter(entry["variants"][v]["files"].values()))["path"] for v in VARIANTS})
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (args.batch, args.sequence))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    sessions = {}
    for name, path in graphs.items():
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        sessions[name] = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        sessions[name].run(None, feed)  # warm up
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for _ in range(args.runs):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - start)
    base_size, base_time = graphs["fp32"].stat().st_size, statistics.median(times["fp32"])
    print(f"batch {args.batch} x sequence {args.sequence}, median of {args.runs} runs, onnxruntime {onnxruntime.__version__}")
    print(f"{'graph':<6} {'MB':>8} {'size':>6} {'ms':>8} {'time':>6}  validation")
    for name, path in graphs.items():
        size, median = path.stat().st_size, statistics.median(times[name])
        figures = "" if name == "fp32" else ", ".join(
            f"cosine {o['cosine']:.5f}, max abs diff {o['max_abs_diff']:.2e}" for o in entry["variants"][name]["validation"].values())
        print(f"{name:<6} {size / 1e6:8.1f} {size / base_size:6.2f} {median * 1000:8.1f} {median / base_time:6.2f}  {figures}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
