"""Time `hatch-onnx export` against the legacy `python -m transformers.onnx` on a BERT-base-sized model.

    python bench/export.py [--rounds 3] [--feature default]

The checkpoint (random weights, BERT-base shape: 12 layers, hidden 768, ~110M parameters) is
generated under bench/.work/ (ignored by git). Both commands run in fresh processes,
alternating, so that they share the machine's state; the script prints each run, both medians
and the ratio. The legacy tool is the copy still shipped inside transformers 4.57: it is given
`--framework pt` (it cannot detect a safetensors-only checkpoint) and, on torch >= 2.9, exports
through the dynamo exporter that torch now defaults to.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"


def make_checkpoint(path: Path) -> Path:
    if (path / "model.safetensors").exists():
        return path
    sys.path.insert(0, str(HERE.parent / "fixtures"))
    os.environ.setdefault("USE_TF", "0")
    import torch
    import transformers
    from generate import wordpiece_tokenizer

    torch.manual_seed(0)
    config = transformers.BertConfig()  # bert-base-uncased's shape
    transformers.BertModel(config).save_pretrained(path)
    wordpiece_tokenizer().save_pretrained(path)
    return path


def timed(cmd: list[str], env: dict) -> tuple[float, bool, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    tail = (result.stderr.strip().splitlines() or [""])[-1][:160]
    return elapsed, result.returncode == 0, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--feature", default="default")
    args = parser.parse_args()
    checkpoint = make_checkpoint(WORK / "bert-base-random")
    env = {**os.environ, "USE_TF": "0", "TOKENIZERS_PARALLELISM": "false"}
    commands = {
        "hatch-onnx": [sys.executable, "-m", "hatch_onnx", "export", "--model", str(checkpoint), "--feature", args.feature, str(WORK / "out-hatch")],
        "legacy": [sys.executable, "-m", "transformers.onnx", "--framework", "pt", "--model", str(checkpoint), "--feature", args.feature, str(WORK / "out-legacy")],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(args.rounds):
        for name, cmd in commands.items():
            shutil.rmtree(WORK / f"out-{name.split('-')[0]}", ignore_errors=True)
            elapsed, ok, tail = timed(cmd, env)
            print(f"round {round_ + 1} {name:<10} {elapsed:7.2f} s {'ok' if ok else 'FAILED: ' + tail}", flush=True)
            if ok:
                times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items() if values}
    for name, median in medians.items():
        print(f"median {name:<10} {median:7.2f} s over {len(times[name])} run(s)")
    if len(medians) == 2:
        print(f"ratio hatch-onnx / legacy = {medians['hatch-onnx'] / medians['legacy']:.2f} (goal <= 0.50)")
    else:
        print("ratio: n/a (a command failed every round)")


if __name__ == "__main__":
    main()
