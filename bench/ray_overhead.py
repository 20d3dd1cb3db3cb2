"""The per-job overhead of ``--executor ray`` against the local pool, both measured in this run.

    python bench/ray_overhead.py [--rounds 2] [--checkpoints 8]

The same plan (one ``default`` job per fixture checkpoint, each checkpoint its own Ray task) is
built cold (empty caches) by:

- the local pool, ``-j 1``: one worker process, started once, exports every job; once as is,
  once with ``OMP_NUM_THREADS=1``, the setting Ray gives a 1-CPU task (torch then runs one
  thread): the baseline the overhead is measured against;
- the Ray executor on a one-node cluster of 1 CPU (``ray start --head --num-cpus 1`` on
  127.0.0.2, its own temp dir): one task at a time, as fair a match for ``-j 1`` as Ray gives.
  Results go the multi-node way: the node writes into a cache of its own and uploads to a
  ``file://`` remote, the driver fetches from there and checks digests.

Also timed: what any Ray build pays once, ``import ray`` + connecting + disconnecting.
Printed: each build's median wall time, and per job ``(ray - local at 1 thread - once) / jobs``.
The cluster is stopped by its process ids (never ``ray stop``, which stops every Ray process
of the machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ["bert", "roberta", "distilbert", "albert", "electra", "gpt2", "t5", "vit", "deit", "convbert", "squeezebert", "mobilebert"]


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def timed(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def start_node(work: Path, env: dict) -> tuple[str, int]:
    """A one-CPU head on 127.0.0.2; its address and its session id (``ray start`` ran in a session of its own)."""
    port, ray = free_port("127.0.0.2"), str(Path(sys.executable).parent / "ray")
    import importlib.util

    # Ray starts its client server (port 10001 by default) when grpc is installed, and refuses the option otherwise.
    names = ("dashboard-agent-listen-port", "metrics-export-port", "runtime-env-agent-port")
    names += ("ray-client-server-port",) if importlib.util.find_spec("grpc") else ()
    ports = [f"--{name}={free_port('127.0.0.2')}" for name in names]
    node = subprocess.Popen([ray, "start", "--head", "--num-cpus", "1", "--node-ip-address", "127.0.0.2", "--port", str(port),
                             "--temp-dir", str(work / "ray"), "--include-dashboard", "false", "--disable-usage-stats",
                             f"--dashboard-port={free_port('127.0.0.1')}", "--object-store-memory", str(80 * 2**20), *ports],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = node.communicate(timeout=120)[0]
    if node.returncode != 0:
        raise SystemExit(f"ray start failed:\n{output}")
    return f"127.0.0.2:{port}", node.pid


def stop_node(sid: int) -> None:
    """SIGKILL the node's processes: ``ray start`` ran in a session of its own, which they all keep."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoints", type=int, default=8, help=f"how many fixture checkpoints (at most {len(CHECKPOINTS)})")
    args = parser.parse_args()
    names = CHECKPOINTS[: args.checkpoints]
    work = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    models = {name: {"checkpoint": str(ROOT / "fixtures" / "checkpoints" / f"{name}-tiny"), "features": ["default"]} for name in names}
    local_params, ray_params = work / "local.yaml", work / "ray.yaml"
    local_params.write_text(yaml.safe_dump({"onnx": {"models": models}}))
    ray_params.write_text(yaml.safe_dump({"onnx": {"models": models, "executor": "ray", "remote": f"file://{work}/remote"}}))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HATCH_ONNX_SERVER": "0"}
    node_env = {**env, "HATCH_ONNX_CACHE": str(work / "node-cache")}
    build = [sys.executable, "-m", "hatch_onnx", "build"]
    address, sid = start_node(work, node_env)
    local, local1, ray, once = [], [], [], []
    try:
        connect = f"import ray; ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR'); ray.shutdown()"
        for _ in range(args.rounds):
            for folder in ("cache", "node-cache", "remote"):
                shutil.rmtree(work / folder, ignore_errors=True)
            local.append(timed([*build, "--params", str(local_params), "-j", "1", "--out", str(work / "out-local")],
                               {**env, "HATCH_ONNX_CACHE": str(work / "cache")}))
            shutil.rmtree(work / "cache")
            local1.append(timed([*build, "--params", str(local_params), "-j", "1", "--out", str(work / "out-local1")],
                                {**env, "HATCH_ONNX_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}))
            shutil.rmtree(work / "cache")
            ray.append(timed([*build, "--params", str(ray_params), "--ray-address", address, "--out", str(work / "out-ray")],
                             {**env, "HATCH_ONNX_CACHE": str(work / "cache")}))
            once.append(timed([sys.executable, "-c", connect], env))
    finally:
        stop_node(sid)
    same = subprocess.run(["diff", "-r", str(work / "out-local"), str(work / "out-ray")], capture_output=True).returncode == 0
    shutil.rmtree(work, ignore_errors=True)
    jobs = len(names)
    t_local, t_local1 = statistics.median(local), statistics.median(local1)
    t_ray, t_once = statistics.median(ray), statistics.median(once)
    print(f"{jobs} jobs ({jobs} checkpoints x default), cold caches, medians of {args.rounds} round(s); outputs identical: {same}")
    print(f"  local pool, -j 1:                   {t_local:6.1f} s  ({t_local / jobs:.2f} s per job)")
    print(f"  local pool, -j 1, OMP_NUM_THREADS=1:{t_local1:6.1f} s  ({t_local1 / jobs:.2f} s per job)")
    print(f"  ray executor, one node of 1 CPU:    {t_ray:6.1f} s  ({t_ray / jobs:.2f} s per job)")
    print(f"  once per ray build (import, connect, disconnect): {t_once:.1f} s")
    print(f"  ray overhead per job, against the pool at 1 thread: {(t_ray - t_local1 - t_once) / jobs:+.2f} s "
          f"(with the once-per-build cost spread over the jobs: {(t_ray - t_local1) / jobs:+.2f} s)")


if __name__ == "__main__":
    main()
