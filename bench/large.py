"""A real-size export: a random checkpoint with a real decoder's config, its wall time and peak memory.

    python bench/large.py [--model qwen2.5-0.5b|qwen2.5-3b|llama-3.1-8b] [--feature causal-lm-with-past] [--dtype float32]
                          [--exporter torchscript|dynamo|genai|fused] [--genai-builder]

The checkpoints (seeded random weights, no download; generated under bench/.work/ on first use by
``fixtures/generate.py``; delete them after, they are large):

================  ======================================================  ============  ==========
``qwen2.5-0.5b``  494M parameters, embeddings tied to the LM head          float32       1.98 GB
``qwen2.5-3b``    3.09B parameters, tied                                   float32       12.4 GB
``llama-3.1-8b``  8.03B parameters, untied                                 float16       16.1 GB
================  ======================================================  ============  ==========

``--dtype`` defaults to the checkpoint's own. Each command runs in a fresh process whose peak
resident memory is read from ``wait4``:

- ``load + forward``: transformers loads the model and runs one forward pass: the floor any
  exporter pays, the baseline of this run;
- ``hatch-onnx export``: load, export (external data: ``model.onnx`` + ``model.onnx.data``),
  validate in onnxruntime, as users run it.

The goal (issue 24): the export's peak at most 1.5x the weights as stored.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
CHECKPOINT = WORK / "qwen2.5-0.5b-random"
MODELS = {"qwen2.5-0.5b": "float32", "qwen2.5-3b": "float32", "llama-3.1-8b": "float16"}  # name -> the dtype it is stored in


def generate(name: str = "qwen2.5-0.5b") -> Path:
    target = CHECKPOINT if name == "qwen2.5-0.5b" else WORK / f"{name}-random"
    if not (target / "config.json").is_file():
        print(f"generating {target} ...", flush=True)
        if name == "qwen2.5-0.5b":
            call = f"generate.write_qwen25_05b(generate.Path({str(target)!r}))"
        else:
            call = f"generate.write_large({name!r}, generate.Path({str(target)!r}), {MODELS[name]!r})"
        code = f"import sys; sys.path.insert(0, {str(HERE.parent / 'fixtures')!r}); import generate; {call}"
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "USE_TF": "0"})
    return target


def measure(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak resident bytes of ``command`` (and the children it waited for), and its output."""
    started = time.perf_counter()
    with open(WORK / "large.log", "w+") as log:
        process = subprocess.Popen(command, env={**os.environ, "USE_TF": "0"}, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        log.seek(0)
        output = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[2:5]} failed:\n{output[-4000:]}")
    return wall, usage.ru_maxrss * 1024, output  # Linux reports KiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-0.5b", choices=sorted(MODELS))
    parser.add_argument("--feature", default="causal-lm-with-past")
    parser.add_argument("--dtype", choices=("float32", "float16"), help="default: the checkpoint's own")
    parser.add_argument("--no-floor", action="store_true", help="skip the load + forward baseline (it costs a load)")
    parser.add_argument("--exporter", default=None, choices=("torchscript", "dynamo", "genai", "fused"),
                        help="default: hatch-onnx's own (fused for the decoders it writes)")
    parser.add_argument("--genai-builder", action="store_true",
                        help="also time onnxruntime-genai's builder alone (fp32/fp16, no validation): the baseline of issue 24")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or MODELS[args.model]
    checkpoint = generate(args.model)
    weights = sum(path.stat().st_size for path in checkpoint.glob("*.safetensors"))
    out = WORK / "out-large"
    shutil.rmtree(out, ignore_errors=True)

    floor = (
        "import torch, transformers; "
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, dtype=getattr(torch, {args.dtype!r})); "
        "m(input_ids=torch.ones(2, 8, dtype=torch.long))"
    )
    base_wall, base_peak, _ = (None, None, None) if args.no_floor else measure([sys.executable, "-c", floor])
    builder = None
    if args.genai_builder:  # the same checkpoint through the builder alone (it loads a tokenizer: bench/decode.py lends one)
        sys.path.insert(0, str(HERE))
        from decode import with_tokenizer

        checkpoint = with_tokenizer(checkpoint)
        shutil.rmtree(WORK / "out-builder", ignore_errors=True)
        builder = measure([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(WORK / "out-builder"),
                           "-p", {"float32": "fp32", "float16": "fp16"}[args.dtype], "-e", "cpu", "-c", str(WORK / "builder-cache")])
        shutil.rmtree(WORK / "out-builder", ignore_errors=True)
    wall, peak, output = measure([sys.executable, "-m", "hatch_onnx", "export", "--model", str(checkpoint), "--feature", args.feature,
                                  "--dtype", args.dtype, *(["--exporter", args.exporter] if args.exporter else []), str(out)])
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    gib = 1024 ** 3
    print(f"checkpoint: {weights / gib:.2f} GiB of {MODELS[args.model]} weights ({checkpoint.name}), feature {args.feature}, dtype {args.dtype}")
    print(f"{'command':<22}{'wall':>9}{'peak RSS':>12}{'x weights':>11}")
    if base_wall is not None:
        print(f"{'load + forward':<22}{base_wall:>8.1f}s{base_peak / gib:>9.2f} GiB{base_peak / weights:>10.2f}x")
    if builder is not None:
        print(f"{'genai builder alone':<22}{builder[0]:>8.1f}s{builder[1] / gib:>9.2f} GiB{builder[1] / weights:>10.2f}x   (validates nothing)")
    print(f"{'hatch-onnx export':<22}{wall:>8.1f}s{peak / gib:>9.2f} GiB{peak / weights:>10.2f}x   (exporter {_exporter(output, args.exporter)}; goal: <= 1.5x)")
    print("export's own report: " + " | ".join(line.strip() for line in output.splitlines() if line.strip().startswith(("generation:", "load "))))
    print("files: " + ", ".join(f"{name} {size / gib:.2f} GiB" for name, size in files.items()))


def _exporter(output: str, requested: "str | None") -> str:
    """The exporter the export used, as its last line says ("Validated ... (type, feature, opset N, exporter)")."""
    for line in reversed(output.splitlines()):
        if line.startswith("Validated "):
            return line.rstrip(")").rsplit(", ", 1)[-1]
    return requested or "default"


if __name__ == "__main__":
    main()
