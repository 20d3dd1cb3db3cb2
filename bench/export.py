"""Time `hatch-onnx export` against the legacy `python -m transformers.onnx` and `optimum-cli export onnx`.

    python bench/export.py [--size minilm|base] [--rounds 3] [--no-optimum]

The checkpoint has random weights and a BERT shape: ``minilm`` (all-MiniLM-L6-v2's: 6 layers,
hidden 384, 22.7M parameters; the default) or ``base`` (bert-base: 110M). It is generated under
bench/.work/ (ignored by git). Every command runs in a fresh process, in rotating order each
round, so that they share the machine's state; the script prints each run, the medians and
the ratios. Commands:

- ``hatch-onnx``: as users run it (export and validation in the command's own process);
- ``hatch-onnx+server``: with ``HATCH_ONNX_SERVER=1``, the opt-in warm server (the first call
  leaves one behind; later calls skip importing torch and transformers);
- ``legacy``: the copy of ``transformers.onnx`` still inside transformers 4.57, given
  ``--framework pt`` (it cannot detect a safetensors-only checkpoint);
- ``optimum``: ``optimum-cli export onnx --task feature-extraction`` from optimum-onnx, in a side
  virtual environment (bench/.work/optimum-venv, created on first use with torch 2.13.0 and
  transformers 4.57: optimum's exporter does not accept transformers 5). Skipped if it does
  not install.

What a small export costs (22.7M parameters, this machine): about 3 s importing torch and
transformers (the same for every tool; a thread that imports onnx and onnxruntime meanwhile
saves nothing: measured equal), then load ~0.2 s, export ~0.8 s, validation ~0.2 s.
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
SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": {},  # bert-base-uncased's
}


def make_checkpoint(size: str) -> Path:
    path = WORK / f"bert-{size}-random"
    if (path / "model.safetensors").exists():
        return path
    sys.path.insert(0, str(HERE.parent / "fixtures"))
    os.environ.setdefault("USE_TF", "0")
    import torch
    import transformers
    from generate import wordpiece_tokenizer

    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**SHAPES[size])).save_pretrained(path)
    wordpiece_tokenizer().save_pretrained(path)
    return path


def optimum_cli() -> Path | None:
    venv = WORK / "optimum-venv"
    cli = venv / "bin" / "optimum-cli"
    if not cli.exists():
        print("installing optimum-onnx into bench/.work/optimum-venv ...", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0", "optimum-onnx[onnxruntime]",
                            "transformers>=4.57,<4.58"], check=True)
        except subprocess.CalledProcessError as exc:
            print(f"optimum-onnx did not install ({exc}); skipping it")
            return None
    return cli


def timed(cmd: list[str], env: dict) -> tuple[float, bool, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    tail = (result.stderr.strip().splitlines() or [""])[-1][:160]
    return elapsed, result.returncode == 0, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="minilm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-optimum", action="store_true")
    args = parser.parse_args()
    checkpoint = make_checkpoint(args.size)
    sockets = Path(tempfile_dir := os.path.join("/tmp", f"hob-export-{os.getpid()}"))
    sockets.mkdir(exist_ok=True)
    env = {**os.environ, "USE_TF": "0", "TOKENIZERS_PARALLELISM": "false", "HATCH_ONNX_SERVER": "0", "TMPDIR": tempfile_dir}
    hatch = [sys.executable, "-m", "hatch_onnx", "export", "--model", str(checkpoint)]
    commands: dict[str, tuple[list[str], dict]] = {
        "hatch-onnx": (hatch + [str(WORK / "out-hatch")], env),
        "hatch-onnx+server": (hatch + [str(WORK / "out-server")], {**env, "HATCH_ONNX_SERVER": "1"}),
        "legacy": ([sys.executable, "-m", "transformers.onnx", "--framework", "pt", "--model", str(checkpoint),
                    str(WORK / "out-legacy")], env),
    }
    cli = None if args.no_optimum else optimum_cli()
    if cli is not None:
        commands["optimum"] = ([str(cli), "export", "onnx", "--model", str(checkpoint), "--task", "feature-extraction",
                                str(WORK / "out-optimum")], env)
    # The server's first call is an ordinary export that leaves the server behind: not timed.
    timed(*commands["hatch-onnx+server"])
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            cmd, cmd_env = commands[name]
            shutil.rmtree(cmd[-1], ignore_errors=True)
            elapsed, ok, tail = timed(cmd, cmd_env)
            print(f"round {round_ + 1} {name:<18} {elapsed:7.2f} s {'ok' if ok else 'FAILED: ' + tail}", flush=True)
            if ok:
                times[name].append(elapsed)
    subprocess.run(["pkill", "-f", f"hatch_onnx.server pt {tempfile_dir}"], check=False)
    shutil.rmtree(sockets, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items() if values}
    for name, median in medians.items():
        print(f"median {name:<18} {median:7.2f} s over {len(times[name])} run(s)")
    for ours in ("hatch-onnx", "hatch-onnx+server"):
        for theirs, goal in (("legacy", 0.5), ("optimum", 0.7)):
            if ours in medians and theirs in medians:
                print(f"ratio {ours} / {theirs} = {medians[ours] / medians[theirs]:.2f} (goal <= {goal:.2f})")


if __name__ == "__main__":
    main()
