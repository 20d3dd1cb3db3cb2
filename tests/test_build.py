"""hatch-onnx build: cache hits, no framework on a cached build, concurrency, crashes, corruption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import checkpoint

pytestmark = pytest.mark.slow
HEAVY = ("torch", "tensorflow", "transformers", "onnxruntime", "tf2onnx", "onnx")


def project(tmp_path: Path, models: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"onnx": {"models": models}}))
    return path


def build(params: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), *args],
                          capture_output=True, text=True, env=env)


def test_build_then_cached_build_imports_no_framework(tmp_path):
    params = project(tmp_path, {
        "bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]},
        "vit": {"checkpoint": str(checkpoint("vit")), "features": ["image-classification"]},
    })
    out = tmp_path / "out"
    first = build(params, "-j", "2", "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("exported") == 2
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["models"]["bert"]["default"]
    assert entry["files"]["model.onnx"]["path"] == "bert/default/model.onnx"
    assert entry["inputs"][0]["name"] == "input_ids" and entry["inputs"][0]["shape"] == ["batch", "sequence"]
    assert entry["source"]["model_type"] == "bert" and entry["validation"]["max_abs_diff"]["last_hidden_state"] <= entry["validation"]["atol"]
    assert entry["toolchain"]["torch"] and len(entry["cache_key"]) == 32
    assert (out / "bert" / "default" / "tokenizer.json").is_file() and (out / "vit" / "image-classification" / "preprocessor_config.json").is_file()

    code = (
        "import sys; from hatch_onnx.build import run_build; "
        f"r = run_build({str(params)!r}, out={str(out)!r}); assert r.exported == 0; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} + ('pydantic',)))"
    )
    cached = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout.strip() == "[]"
    again = build(params, "--out", str(out))
    assert "Nothing exported" in again.stdout and again.stdout.count(" hit ") == 2


def test_concurrent_builds_export_once(tmp_path):
    params = project(tmp_path, {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}})
    procs = [subprocess.Popen([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), "--out", str(tmp_path / f"out{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    statuses = sorted(line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("bert:default"))
    assert statuses == ["exported", "hit"]
    assert (tmp_path / "out0/bert/default/model.onnx").read_bytes() == (tmp_path / "out1/bert/default/model.onnx").read_bytes()


def test_killed_worker_leaves_nothing_and_next_build_succeeds(tmp_path):
    params = project(tmp_path, {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}})
    out = tmp_path / "out"
    killer = tmp_path / "sitecustomize.py"  # the worker kills itself as it starts exporting
    killer.write_text(
        "import os, signal\n"
        "if b'hatch_onnx.worker' in open('/proc/self/cmdline', 'rb').read():\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    failed = build(params, "--out", str(out), env=env)
    assert failed.returncode == 1 and "killed by signal 9" in failed.stderr
    assert not out.exists()
    cache = Path(os.environ["HATCH_ONNX_CACHE"])
    assert not list((cache / "v1").glob("*/*")) if (cache / "v1").exists() else True
    assert not any((cache / "tmp").iterdir()) if (cache / "tmp").exists() else True
    ok = build(params, "--out", str(out))
    assert ok.returncode == 0 and (out / "bert/default/model.onnx").is_file()


def test_corrupted_entry_is_rebuilt(tmp_path):
    params = project(tmp_path, {"gpt2": {"checkpoint": str(checkpoint("gpt2")), "features": ["causal-lm"]}})
    out = tmp_path / "out"
    assert build(params, "--out", str(out)).returncode == 0
    cache = Path(os.environ["HATCH_ONNX_CACHE"])
    (model,) = cache.glob("v1/*/*/model.onnx")
    model.chmod(0o644)
    model.write_bytes(model.read_bytes()[:-10])  # truncated: the size check catches it
    again = build(params, "--out", str(out))
    assert again.returncode == 0 and "exported" in again.stdout
    assert model.stat().st_size == (out / "gpt2/causal-lm/model.onnx").stat().st_size


def test_failed_job_fails_the_build_after_the_others(tmp_path):
    params = project(tmp_path, {
        "good": {"checkpoint": str(checkpoint("bert")), "features": ["default"]},
        "head": {"checkpoint": str(checkpoint("bert")), "features": ["sequence-classification"]},  # no head weights
    })
    out = tmp_path / "out"
    result = build(params, "--out", str(out))
    # the worker's error type travels back: a checkpoint without the head's weights is bad input
    assert result.returncode == 2 and "head:sequence-classification" in result.stderr and "--allow-new-head" in result.stderr
    assert "good:default" in result.stdout and not out.exists()
    retry = build(params, "--only", "good", "--out", str(out))
    assert retry.returncode == 0 and " hit " in retry.stdout  # the good job was cached


# A sitecustomize for workers: logs each worker's start and each model load, and SIGKILLs the
# worker that is asked to export a checkpoint whose folder name starts with "crash".
WORKER_PROBE = """
import os, signal
if b"hatch_onnx.worker" in open("/proc/self/cmdline", "rb").read():
    log = open(os.environ["PROBE_LOG"], "a")
    log.write(f"start {os.getpid()}\\n"); log.flush()
    from hatch_onnx import loading
    real = loading.load_model
    def load_model(feature, model, *args, **kwargs):
        if os.path.basename(model).startswith("crash"):
            os.kill(os.getpid(), signal.SIGKILL)
        log.write(f"load {os.path.basename(model)} {feature}\\n"); log.flush()
        return real(feature, model, *args, **kwargs)
    loading.load_model = load_model
"""


def probed_env(tmp_path: Path) -> tuple[dict, Path]:
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(WORKER_PROBE)
    log = tmp_path / "probe.log"
    return {**os.environ, "PYTHONPATH": str(tmp_path / "probe"), "PROBE_LOG": str(log)}, log


def test_one_worker_runs_every_job_and_loads_each_head_once(tmp_path):
    params = project(tmp_path, {
        "gpt2": {"checkpoint": str(checkpoint("gpt2")), "features": ["causal-lm", "default", "causal-lm-with-past", "default-with-past"]},
        "bert": {"checkpoint": str(checkpoint("bert")), "features": ["default", "masked-lm"]},
    })
    env, log = probed_env(tmp_path)
    result = build(params, "-j", "1", "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    assert sum(line.startswith("start") for line in lines) == 1  # six jobs, one worker
    loads = sorted(line for line in lines if line.startswith("load"))
    # one load per (checkpoint, head class): gpt2's default and causal-lm heads, bert's two
    assert loads == ["load bert-tiny default", "load bert-tiny masked-lm", "load gpt2-tiny causal-lm", "load gpt2-tiny default"]


def test_crashed_worker_fails_its_job_alone(tmp_path):
    crash = tmp_path / "crash-gpt2"  # not bert's content: the same content would be a cache hit
    import shutil

    shutil.copytree(checkpoint("gpt2"), crash)
    params = project(tmp_path, {
        "bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]},
        "crash": {"checkpoint": str(crash), "features": ["default", "causal-lm"]},
        "vit": {"checkpoint": str(checkpoint("vit")), "features": ["default"]},
    })
    env, log = probed_env(tmp_path)
    result = build(params, "-j", "1", "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 1
    assert "crash:default (worker died (killed by signal 9)" in result.stderr
    assert "crash:causal-lm (worker died (killed by signal 9)" in result.stderr
    statuses = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:] if ":" in line.split()[0]}
    assert statuses == {"bert:default": "exported", "crash:default": "failed", "crash:causal-lm": "failed", "vit:default": "exported"}
    assert not (tmp_path / "out").exists()
    # the pool restarted the worker after each crash; the good exports are in the cache
    starts = sum(line.startswith("start") for line in log.read_text().splitlines())
    assert starts == 3
    again = build(params, "--only", "bert", "vit", "--out", str(tmp_path / "out"))
    assert again.returncode == 0 and "Nothing exported" in again.stdout


def test_big_checkpoint_recycles_its_worker(tmp_path):
    params = project(tmp_path, {
        "bert": {"checkpoint": str(checkpoint("bert")), "features": ["default", "masked-lm"]},
        "vit": {"checkpoint": str(checkpoint("vit")), "features": ["default"]},
    })
    env, log = probed_env(tmp_path)
    env["HATCH_ONNX_RECYCLE_MB"] = "0.001"  # every fixture is "big"
    result = build(params, "-j", "1", "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    # a new worker per checkpoint, never per job: bert's two features share one
    assert sum(line.startswith("start") for line in log.read_text().splitlines()) == 2


def test_a_killed_build_takes_its_worker_with_it_and_the_next_build_cleans_up(tmp_path):
    import signal

    params = project(tmp_path, {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}})
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(
        "import os, time\n"
        "if b'hatch_onnx.worker' in open('/proc/self/cmdline', 'rb').read():\n"
        "    open(os.environ['PROBE_LOG'], 'a').write(f'{os.getpid()}\\n')\n"
        "    from hatch_onnx import loading\n"
        "    loading.load_model = lambda *a: time.sleep(600)\n"
    )
    log = tmp_path / "worker.pid"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "probe"), "PROBE_LOG": str(log)}
    build_process = subprocess.Popen([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = Path(os.environ["HATCH_ONNX_CACHE"])
    deadline = time.monotonic() + 120
    while not (log.exists() and list((cache / "tmp").glob("stage-*"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    worker = int(log.read_text().split()[0])
    build_process.send_signal(signal.SIGKILL)
    build_process.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]
    assert list((cache / "tmp").glob("stage-*"))  # the killed build's staging, left behind
    ok = build(params)
    assert ok.returncode == 0, ok.stderr
    assert not list((cache / "tmp").glob("stage-*"))  # ... cleaned by the next build


def test_concurrent_only_builds_into_one_out_keep_every_model_in_the_manifest(tmp_path):
    params = project(tmp_path, {
        "bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]},
        "vit": {"checkpoint": str(checkpoint("vit")), "features": ["default"]},
    })
    out = tmp_path / "out"
    assert build(params, "--out", str(tmp_path / "warm")).returncode == 0  # exports cached: the race is materialising
    for _ in range(5):
        shutil.rmtree(out, ignore_errors=True)
        procs = [subprocess.Popen([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), "--only", name,
                                   "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in ("bert", "vit")]
        outputs = [p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert sorted(json.loads((out / "manifest.json").read_text())["models"]) == ["bert", "vit"]
        assert (out / "bert/default/model.onnx").is_file() and (out / "vit/default/model.onnx").is_file()
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_outputs_are_not_the_caches_files(tmp_path):
    """Writing to an --out graph (root ignores read-only modes) never reaches the cache entry."""
    params = project(tmp_path, {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}})
    out = tmp_path / "out"
    assert build(params, "--out", str(out)).returncode == 0
    graph = out / "bert/default/model.onnx"
    cache = Path(os.environ["HATCH_ONNX_CACHE"])
    (entry_graph,) = cache.glob("v1/*/*/model.onnx")
    assert graph.stat().st_ino != entry_graph.stat().st_ino
    before = entry_graph.read_bytes()
    graph.chmod(0o644)
    with open(graph, "ab") as handle:
        handle.write(b"appended")
    assert entry_graph.read_bytes() == before
    again = build(params, "--out", str(out))  # the edited output is found out by its digest and replaced
    assert again.returncode == 0 and graph.read_bytes() == before


def test_a_checkpoint_rewritten_during_its_export_stores_nothing(tmp_path):
    """A second writer changes the checkpoint while the worker exports: no entry under the old content's key."""
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint("bert"), folder)
    params = project(tmp_path, {"bert": {"checkpoint": str(folder), "features": ["default"]}})
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(
        "import os\n"
        "if b'hatch_onnx.worker' in open('/proc/self/cmdline', 'rb').read():\n"
        "    from hatch_onnx import loading\n"
        "    real = loading.load_model\n"
        "    def load_model(feature, model, *args, **kwargs):\n"
        "        loaded = real(feature, model, *args, **kwargs)\n"
        "        with open(os.path.join(model, 'config.json'), 'a') as config:  # the checkpoint changes under the export\n"
        "            config.write('\\n')\n"
        "        return loaded\n"
        "    loading.load_model = load_model\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "probe")}
    result = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params)], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "changed while it was exported" in result.stderr, result.stderr
    cache = Path(os.environ["HATCH_ONNX_CACHE"])
    assert not list(cache.glob("v1/*/*"))  # nothing stored
    again = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr  # the next build exports the new content


def test_two_exports_of_one_key_are_the_same_entry(tmp_path):
    """Timings and the checkpoint's local path stay out of what is digested: two machines' entries match."""
    import json

    params = project(tmp_path, {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}})
    listings = []
    for machine in ("a", "b"):
        env = {**os.environ, "HATCH_ONNX_CACHE": str(tmp_path / f"cache-{machine}")}
        result = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params)], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        (entry,) = (tmp_path / f"cache-{machine}").glob("v1/*/*/entry.json")
        record = json.loads(entry.read_text())
        assert record["timings"]["total"] > 0  # kept, in the listing
        assert "timings" not in json.loads((entry.parent / "report.json").read_text())
        listings.append((entry.parent.name, record["files"]))
    assert listings[0] == listings[1]
