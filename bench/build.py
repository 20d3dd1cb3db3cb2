"""Time `hatch-onnx build` over the fixtures: cold (-j 1, -j 2) against one CLI export per job, then cached.

    python bench/build.py [--features default] [--skip-cold]

Writes a params.yaml over every fixture checkpoint (one job per fixture and feature) into a
temporary folder with its own cache. Cold builds start from an empty cache each time; the
baseline runs `hatch-onnx export` once per job, one after the other, as a script would. The
cached build is timed against a bare `python -c pass` (interpreter start-up) in the same run,
alternating, and checked to import no ML framework.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "tensorflow", "transformers", "onnxruntime", "tf2onnx", "onnx")


def run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", nargs="+", default=["default"])
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hatch-onnx-bench-"))
    checkpoints = sorted((ROOT / "fixtures" / "checkpoints").iterdir())
    models = {c.name: {"checkpoint": str(c), "features": args.features, "allow_new_head": True} for c in checkpoints}
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump({"onnx": {"cache": "cache", "models": models}}))
    env = {k: v for k, v in os.environ.items() if k != "HATCH_ONNX_CACHE"}
    build = [sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), "--out", str(work / "out")]
    jobs = len(models) * len(args.features)
    print(f"{jobs} jobs ({len(models)} fixtures x {args.features})")

    if not args.skip_cold:
        for j in (1, 2):
            shutil.rmtree(work / "cache", ignore_errors=True)
            print(f"cold build -j {j}: {run(build + ['-j', str(j)], env):7.1f} s", flush=True)
        start = time.perf_counter()
        for name, model in models.items():
            for feature in args.features:
                subprocess.run([sys.executable, "-m", "hatch_onnx", "export", "--model", model["checkpoint"], "--feature", feature,
                                "--allow-new-head", str(work / "cli" / name / feature)], check=True, capture_output=True, env=env)
        print(f"one CLI export per job: {time.perf_counter() - start:7.1f} s (baseline)", flush=True)
    else:
        run(build + ["-j", "2"], env)

    bare, cached = [], []
    for _ in range(args.rounds):
        bare.append(run([sys.executable, "-c", "pass"], env))
        cached.append(run(build, env))
    probe = subprocess.run(
        [sys.executable, "-c", f"import sys; from hatch_onnx.build import run_build; r = run_build({str(params)!r}, out={str(work / 'out')!r}); "
         f"print(r.exported, sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip()
    b, c = statistics.median(bare), statistics.median(cached)
    print(f"bare interpreter start-up: {b * 1000:7.0f} ms (median of {args.rounds})")
    print(f"fully cached build:        {c * 1000:7.0f} ms (median of {args.rounds}); above start-up: {(c - b) * 1000:.0f} ms (goal < 300 ms)")
    print(f"cached build: jobs exported, frameworks imported = {probe}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
