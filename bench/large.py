"""A real-size export: a random checkpoint with Qwen2.5-0.5B's config, its wall time and peak memory.

    python bench/large.py [--feature causal-lm-with-past] [--dtype float32]

The checkpoint (494M parameters, 1.98 GB of float32 safetensors, embeddings tied to the LM head;
``fixtures/generate.py``'s ``QWEN25_05B``) is generated under bench/.work/ on first use, with
seeded random weights; no download. Each
command runs in a fresh process whose peak resident memory is read from ``wait4``:

- ``load + forward``: transformers loads the model and runs one forward pass: the floor any
  exporter pays, the baseline of this run;
- ``hatch-onnx export``: load, export (external data: ``model.onnx`` + ``model.onnx.data``),
  validate in onnxruntime, as users run it.

The goal (issue 12): the export's peak under 3x the float32 weights.
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


def generate() -> Path:
    if not (CHECKPOINT / "model.safetensors").is_file():
        print(f"generating {CHECKPOINT} ...", flush=True)
        code = f"import sys; sys.path.insert(0, {str(HERE.parent / 'fixtures')!r}); import generate; generate.write_qwen25_05b(generate.Path({str(CHECKPOINT)!r}))"
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "USE_TF": "0"})
    return CHECKPOINT


def measure(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident bytes of ``command`` (and the children it waited for)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "USE_TF": "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[2:5]} failed:\n{process.stderr.read()}")
    return wall, usage.ru_maxrss * 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature", default="causal-lm-with-past")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    args = parser.parse_args(argv)
    checkpoint = generate()
    weights = (checkpoint / "model.safetensors").stat().st_size
    out = WORK / "out-large"
    shutil.rmtree(out, ignore_errors=True)

    floor = (
        "import torch, transformers; "
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, dtype=getattr(torch, {args.dtype!r})); "
        "m(input_ids=torch.ones(2, 8, dtype=torch.long))"
    )
    base_wall, base_peak = measure([sys.executable, "-c", floor])
    wall, peak = measure([sys.executable, "-m", "hatch_onnx", "export", "--model", str(checkpoint), "--feature", args.feature,
                          "--dtype", args.dtype, str(out)])
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    gib = 1024 ** 3
    print(f"checkpoint: {weights / gib:.2f} GiB of float32 weights ({CHECKPOINT.name}), feature {args.feature}, dtype {args.dtype}")
    print(f"{'command':<22}{'wall':>9}{'peak RSS':>12}{'x weights':>11}")
    print(f"{'load + forward':<22}{base_wall:>8.1f}s{base_peak / gib:>9.2f} GiB{base_peak / weights:>10.2f}x")
    print(f"{'hatch-onnx export':<22}{wall:>8.1f}s{peak / gib:>9.2f} GiB{peak / weights:>10.2f}x   (goal: < 3x)")
    print("files: " + ", ".join(f"{name} {size / gib:.2f} GiB" for name, size in files.items()))


if __name__ == "__main__":
    main()
