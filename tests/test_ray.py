"""Builds on a real two-node Ray cluster (``hatch_onnx.ray_executor``), results exchanged through moto's S3 server.

One cluster for the module, every address on 127.0.0.0/8: a head at 127.0.<line>.2 (2 CPUs, memory
for one export) and a worker node at 127.0.<line>.3 (2 CPUs, memory for two small exports or one
"big" one), each with its own temp dir and its own node-local cache, different from every
driver's. The worker node runs in a mount namespace of its own, where one checkpoint folder is
another copy: the node that differs. The nodes are stopped by their process ids (never
``ray stop``, which would stop every Ray process of the machine).
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import checkpoint
from test_remote import s3  # noqa: F401  (moto's S3 server, module-scoped)

from hatch_onnx.toolchain import transformers_major

# Loopback addresses of the two nodes, one subnet per transformers line: scripts/test runs the
# lines at the same time, and two clusters on one node address would find each other's raylets.
_SUBNET = transformers_major() or 0
HEAD_IP, WORKER_IP = f"127.0.{_SUBNET}.2", f"127.0.{_SUBNET}.3"
BUCKET = "ray-builds"
# Four checkpoints, two features each: 8 jobs, 4 Ray tasks.
MODELS = {
    "bert": {"checkpoint": str(checkpoint("bert")), "features": ["default", "masked-lm"]},
    "roberta": {"checkpoint": str(checkpoint("roberta")), "features": ["default", "masked-lm"]},
    "distilbert": {"checkpoint": str(checkpoint("distilbert")), "features": ["default", "masked-lm"]},
    "electra": {"checkpoint": str(checkpoint("electra")), "features": ["default", "masked-lm"]},
}
# A "big" checkpoint: a tiny one plus sparse weights, so that its memory estimate exceeds the
# head's memory and half the worker node's (see the cluster fixture).
PADDING_BYTES = 300 * 2**20


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _pids_of_session(sid: int) -> list[int]:
    """The processes of one node: ``ray start`` ran in a session of its own, which every process it
    starts keeps (Ray's workers take process groups of their own, not sessions)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _stop_node(sid: int) -> None:
    """SIGKILL every process of one node, by their ids."""
    for pid in _pids_of_session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _big(tmp: Path, name: str) -> Path:
    folder = tmp / name
    shutil.copytree(checkpoint(name.split("-")[0]), folder)
    with open(folder / "padding.safetensors", "wb") as padding:  # sparse: no disk used, zeros read
        padding.truncate(PADDING_BYTES)
    return folder


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):  # noqa: F811
    """The two nodes, started once; yields their address and what tests need to know."""
    from hatch_onnx.ray_executor import memory_estimate

    root = tmp_path_factory.mktemp("ray")
    aws, client = s3
    client.create_bucket(Bucket=BUCKET)
    # Checkpoints the nodes see differently: the worker node sees another copy of `differs`.
    shared = root / "shared"
    shared.mkdir()
    big = {name: _big(shared, name) for name in ("bert-big", "vit-big", "distilbert-differs")}
    other_copy = root / "other-copy"
    shutil.copytree(big["distilbert-differs"], other_copy)
    (other_copy / "NOTE.txt").write_text("this node's copy has one more file\n")

    small = memory_estimate(checkpoint("bert"))
    large = memory_estimate(big["bert-big"])
    assert 1.5 * small < large <= 3 * small  # more than the head's memory, and half the worker node's; fits the latter
    # A token some earlier `ray.init()` left in ~/.ray would turn authentication on for the head only.
    env = {**os.environ, **aws, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    port = _free_port(HEAD_IP)
    common = ["--disable-usage-stats", "--object-store-memory", str(80 * 2**20), "--num-cpus", "2"]

    def ports(host: str) -> list[str]:
        # Ray starts its client server (on port 10001 by default) when grpc is installed, and refuses the option otherwise.
        import importlib.util

        client = ["--ray-client-server-port", str(_free_port(host))] if importlib.util.find_spec("grpc") else []
        return [*client, "--dashboard-agent-listen-port", str(_free_port(host)),
                "--metrics-export-port", str(_free_port(host)), "--runtime-env-agent-port", str(_free_port(host)),
                "--node-manager-port", str(_free_port(host)), "--object-manager-port", str(_free_port(host))]

    head_cache, worker_cache = root / "head-cache", root / "worker-cache"
    ray = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray, "start", "--head", "--node-ip-address", HEAD_IP, "--port", str(port), "--temp-dir", str(root / "head"),
         "--include-dashboard", "false", "--dashboard-port", str(_free_port("127.0.0.1")), *ports(HEAD_IP), *common],
        env={**env, "HATCH_ONNX_CACHE": str(head_cache), "RAY_OVERRIDE_RESOURCES": json.dumps({"memory": int(1.5 * small)})},
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    nodes = [head.pid]
    try:
        assert head.communicate(timeout=120)[0] is not None and head.returncode == 0, "ray start --head failed"
        # A mount namespace of its own (root, or a user namespace): where it cannot be had, the node
        # starts without it and the test of a differing copy is skipped.
        unshare = ["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-Urm"]
        differs = shutil.which("unshare") is not None and subprocess.run(
            [*unshare, "sh", "-c", f"mount --bind {other_copy} {big['distilbert-differs']}"], capture_output=True).returncode == 0
        mount = f"mount --bind {other_copy} {big['distilbert-differs']} && " if differs else ""
        start = (f"{mount}exec {ray} start --address {HEAD_IP}:{port} --node-ip-address {WORKER_IP} "
                 f"--temp-dir {root / 'worker'} {' '.join(ports(WORKER_IP) + common)}")
        worker = subprocess.Popen(
            [*(unshare if differs else []), "sh", "-c", start],
            env={**env, "HATCH_ONNX_CACHE": str(worker_cache), "RAY_OVERRIDE_RESOURCES": json.dumps({"memory": 3 * small})},
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        nodes.append(worker.pid)
        output = worker.communicate(timeout=120)[0]
        assert worker.returncode == 0, output
        yield {"address": f"{HEAD_IP}:{port}", "env": env, "client": client, "head_sid": head.pid, "worker_sid": worker.pid,
               "differs": differs,
               "caches": (head_cache, worker_cache), "big": big, "small": small, "large": large}
    finally:
        for sid in nodes:
            _stop_node(sid)
        for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
        client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def fresh(cluster, tmp_path):
    """Empty node caches and an empty bucket prefix: every test exports from scratch."""
    for cache in cluster["caches"]:
        shutil.rmtree(cache, ignore_errors=True)
    yield cluster


def params(tmp_path: Path, models: dict, remote: str | None = f"s3://{BUCKET}/cluster", name: str = "params.yaml") -> Path:
    onnx = {"executor": "ray", "models": models, **({"remote": remote} if remote else {})}
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"onnx": onnx}))
    return path


def _default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
    handler: the driver of a test run that way would never see the Ctrl-C under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def build(params_file: Path, env: dict, cache: Path, *args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-m", "hatch_onnx", "build", "--params", str(params_file), *args]
    full_env = {**env, "HATCH_ONNX_CACHE": str(cache)}
    if popen:  # a driver Ctrl-C reaches: started as from a terminal even when the tests run as a background job
        return subprocess.Popen(command, env=full_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=_default_sigint)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=600)


def table(stdout: str) -> dict[str, list[str]]:
    """The closing table's rows: label -> [status, time, max abs diff, node]."""
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line.split() and ":" in line.split()[0]}


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The same models built by the local pool: the output a Ray build must reproduce byte for byte."""
    folder = tmp_path_factory.mktemp("local")
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"onnx": {"models": MODELS}}))
    result = build(path, dict(os.environ), folder / "cache", "--out", str(folder / "out"), "-j", "2")
    assert result.returncode == 0, result.stderr
    return folder / "out"


@pytest.mark.slow
def test_a_build_spreads_over_both_nodes_and_matches_a_local_build(fresh, local_reference, tmp_path):
    cluster = fresh
    result = build(params(tmp_path, MODELS), cluster["env"], tmp_path / "cache", "--out", str(tmp_path / "out"),
                   "--ray-address", cluster["address"])
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    assert len(rows) == 8 and {row[0] for row in rows.values()} == {"exported"}, result.stdout
    assert {row[-1] for row in rows.values()} == {HEAD_IP, WORKER_IP}, result.stdout  # both nodes exported
    assert all(f" on {row[-1]} " in result.stderr for row in rows.values())  # the progress names the node too
    assert same_tree(tmp_path / "out", local_reference)
    # the exports came back through the remote: 8 entries there, none made by the driver
    keys = [item["Key"] for item in cluster["client"].list_objects_v2(Bucket=BUCKET, Prefix="cluster/")["Contents"]]
    assert sum(key.endswith("/entry.json") for key in keys) == 8

    again = build(params(tmp_path, MODELS), cluster["env"], tmp_path / "cache", "--out", str(tmp_path / "out"),
                  "--ray-address", cluster["address"])
    assert "Nothing exported" in again.stdout and {row[0] for row in table(again.stdout).values()} == {"hit"}


@pytest.mark.slow
def test_a_checkpoint_that_differs_on_a_node_is_refused_there(fresh, tmp_path):
    """Its memory estimate fits only the worker node, whose copy differs: refused in one line, no entry anywhere."""
    cluster = fresh
    if not cluster["differs"]:
        pytest.skip("no mount namespace here (unshare): the worker node cannot see another copy")
    models = {"differs": {"checkpoint": str(cluster["big"]["distilbert-differs"]), "features": ["default"]},
              "fine": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}}
    result = build(params(tmp_path, models, remote=f"s3://{BUCKET}/differs"), cluster["env"], tmp_path / "cache",
                   "--out", str(tmp_path / "out"), "--ray-address", cluster["address"])
    assert result.returncode == 2, result.stdout + result.stderr  # a checkpoint problem: bad input, as locally
    rows = table(result.stdout)
    assert rows["differs:default"][0] == "failed" and rows["differs:default"][-1] == WORKER_IP, result.stdout
    assert rows["fine:default"][0] == "exported"
    (refusal,) = [line for line in result.stderr.splitlines() if "differs:default failed" in line]
    assert "is not the driver's copy" in refusal and WORKER_IP in refusal
    assert not (tmp_path / "out").exists()
    listed = cluster["client"].list_objects_v2(Bucket=BUCKET, Prefix="differs/").get("Contents", [])
    assert sum(item["Key"].endswith("/entry.json") for item in listed) == 1  # only fine:default's
    worker_cache = cluster["caches"][1]
    assert len(list(worker_cache.glob("v1/*/*/entry.json"))) <= 1  # fine:default may have run there; differs never


@pytest.mark.slow
def test_a_failing_job_fails_alone_with_the_local_exit_code(fresh, tmp_path):
    """As in the local pool (tests/test_build.py): a head without weights fails its job, exit 2; the rest is cached."""
    cluster = fresh
    models = {"good": {"checkpoint": str(checkpoint("bert")), "features": ["default"]},
              "head": {"checkpoint": str(checkpoint("bert")), "features": ["sequence-classification"]}}
    path = params(tmp_path, models, remote=f"s3://{BUCKET}/failing")
    result = build(path, cluster["env"], tmp_path / "cache", "--out", str(tmp_path / "out"), "--ray-address", cluster["address"])
    assert result.returncode == 2 and "head:sequence-classification" in result.stderr and "--allow-new-head" in result.stderr
    rows = table(result.stdout)
    assert rows["good:default"][0] == "exported" and rows["head:sequence-classification"][0] == "failed", result.stdout
    assert rows["head:sequence-classification"][-1] in (HEAD_IP, WORKER_IP) and not (tmp_path / "out").exists()
    retry = build(path, cluster["env"], tmp_path / "cache", "--only", "good", "--ray-address", cluster["address"])
    assert retry.returncode == 0 and table(retry.stdout)["good:default"][0] == "hit"

    # A validation failure: exit 1, and what its worker logged on its node is printed under its line.
    strict = {"strict": {"checkpoint": str(checkpoint("bert")), "features": ["sequence-classification"], "allow_new_head": True,
                         "atol": 1e-15}}
    failed = build(params(tmp_path, strict, remote=f"s3://{BUCKET}/failing", name="strict.yaml"), cluster["env"],
                   tmp_path / "cache", "--ray-address", cluster["address"])
    assert failed.returncode == 1 and "exceeds atol" in failed.stderr, failed.stderr
    lines = failed.stderr.splitlines()
    (line,) = [index for index, text in enumerate(lines) if "strict:sequence-classification failed on" in text]
    assert lines[line + 1].startswith("    | ") and "randomly initialised head" in lines[line + 1], failed.stderr


@pytest.mark.slow
def test_the_memory_resource_keeps_two_big_exports_apart(fresh, tmp_path):
    """Two exports that each need more than half the worker node's memory (and more than the head
    has) run there one after the other, though the node has two CPUs."""
    cluster = fresh
    models = {name: {"checkpoint": str(cluster["big"][name]), "features": ["default"]} for name in ("bert-big", "vit-big")}
    result = build(params(tmp_path, models, remote=f"s3://{BUCKET}/memory"), cluster["env"], tmp_path / "cache",
                   "--ray-address", cluster["address"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert {row[-1] for row in table(result.stdout).values()} == {WORKER_IP}, result.stdout
    entries = [json.loads(path.read_text()) for path in cluster["caches"][1].glob("v1/*/*/entry.json")]
    spans = sorted((entry["created"] - entry["timings"]["total"], entry["created"]) for entry in entries)
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans  # the second began after the first was stored


@pytest.mark.slow
def test_more_than_one_node_and_no_remote_is_refused_before_any_work(fresh, tmp_path):
    cluster = fresh
    result = build(params(tmp_path, {"bert": MODELS["bert"]}, remote=None), cluster["env"], tmp_path / "cache",
                   "--ray-address", cluster["address"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines() if "error:" in line]
    assert len(result.stderr.strip().splitlines()) == 1 and "2 nodes" in result.stderr and "no remote cache" in result.stderr
    assert not any(cache.exists() and any(cache.glob("v1/*/*")) for cache in cluster["caches"])


def _exports_started(caches) -> bool:
    return any(path.name.startswith("stage-") for cache in caches if (cache / "tmp").is_dir() for path in (cache / "tmp").iterdir())


def _export_workers(sessions) -> list[int]:
    """The export worker processes (``python -m hatch_onnx.worker``) running on the cluster's nodes."""
    found = []
    for sid in sessions:
        for pid in _pids_of_session(sid):
            try:
                if b"hatch_onnx.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
    return found


@pytest.mark.slow
def test_ctrl_c_cancels_the_tasks(fresh, tmp_path):
    cluster = fresh
    running = build(params(tmp_path, MODELS, remote=f"s3://{BUCKET}/interrupted"), cluster["env"], tmp_path / "cache",
                    "--ray-address", cluster["address"], popen=True)
    deadline = time.monotonic() + 240
    while not _exports_started(cluster["caches"]):
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.05)
    deadline = time.monotonic() + 60
    while not _export_workers([cluster["head_sid"], cluster["worker_sid"]]):  # the export workers the cancel must end
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.05)
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=60)
    assert running.returncode == 130 and "interrupted" in stderr, stderr
    deadline = time.monotonic() + 30
    while _export_workers([cluster["head_sid"], cluster["worker_sid"]]):
        assert time.monotonic() < deadline, "exports went on after Ctrl-C"
        time.sleep(0.2)


@pytest.mark.slow
def test_ray_alone_is_a_local_instance_sharing_the_local_cache(local_reference, tmp_path):
    """No address, no remote: a Ray instance of the build's own, one node, whose tasks write into the driver's cache."""
    env = {name: value for name, value in os.environ.items() if name not in ("RAY_ADDRESS", "HATCH_ONNX_REMOTE")}
    token = Path.home() / ".ray" / "auth_token"
    had_token = token.exists()
    result = build(params(tmp_path, MODELS, remote=None), env, tmp_path / "cache", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    assert {row[0] for row in rows.values()} == {"exported"} and len({row[-1] for row in rows.values()}) == 1, result.stdout
    assert len(list((tmp_path / "cache").glob("v1/*/*/entry.json"))) == 8
    assert same_tree(tmp_path / "out", local_reference)
    assert token.exists() == had_token  # the instance's token stayed in its environment: no file for later `ray start`s


@pytest.mark.slow
def test_stopping_the_worker_node_mid_build_loses_nothing(fresh, local_reference, tmp_path):
    """Last in the module: the worker node is killed as it starts exporting; Ray runs its task again on the head."""
    cluster = fresh
    running = build(params(tmp_path, MODELS, remote=f"s3://{BUCKET}/node-stop"), cluster["env"], tmp_path / "cache",
                    "--out", str(tmp_path / "out"), "--ray-address", cluster["address"], popen=True)
    staging = cluster["caches"][1] / "tmp"
    deadline = time.monotonic() + 240
    while not (staging.is_dir() and any(path.name.startswith("stage-") for path in staging.iterdir())):
        assert running.poll() is None, running.communicate()
        assert time.monotonic() < deadline, "no export started on the worker node"
        time.sleep(0.05)
    _stop_node(cluster["worker_sid"])
    stopped = time.monotonic()
    stdout, stderr = running.communicate(timeout=600)
    print(f"the build ended {time.monotonic() - stopped:.1f} s after the worker node was stopped\n{stderr}\n{stdout}")
    assert running.returncode == 0, stdout + stderr
    rows = table(stdout)
    assert len(rows) == 8 and {row[0] for row in rows.values()} <= {"exported", "fetched"}, stdout
    assert same_tree(tmp_path / "out", local_reference)


def test_executor_setting_and_ray_address_are_checked_before_any_work(tmp_path):
    """A bad onnx.executor names its key; --ray-address without the ray executor says so. Ray is never imported."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"onnx": {"executor": "slurm", "models": {"bert": MODELS["bert"]}}}))
    bad = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "onnx.executor" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    path.write_text(yaml.safe_dump({"onnx": {"models": {"bert": MODELS["bert"]}}}))
    alone = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(path), "--ray-address", "127.0.0.2:1"],
                           capture_output=True, text=True)
    assert alone.returncode == 2 and "--executor ray" in alone.stderr and len(alone.stderr.strip().splitlines()) == 1, alone.stderr
    nobody = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(path), "--executor", "ray",
                             "--ray-address", f"127.0.0.1:{_free_port('127.0.0.1')}"], capture_output=True, text=True, timeout=120)
    assert nobody.returncode == 2 and "nothing answers there" in nobody.stderr, nobody.stderr
    assert len(nobody.stderr.strip().splitlines()) == 1, nobody.stderr  # Ray would retry for minutes


@pytest.mark.slow
def test_a_cached_ray_build_never_imports_ray(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"onnx": {"models": {"bert": {**MODELS["bert"], "features": ["default"]}}}}))
    assert subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True).returncode == 0
    code = ("import sys; from hatch_onnx.build import run_build; "
            f"r = run_build({str(path)!r}, executor='ray'); assert r.exported == 0; print('ray' in sys.modules)")
    cached = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert cached.returncode == 0 and cached.stdout.strip() == "False", cached.stderr


def test_the_memory_estimate_follows_the_weights_and_their_dtypes(tmp_path):
    """Weights only (not tokenizers), scaled from the dtype config.json stores them in to the one the job loads."""
    from hatch_onnx.ray_executor import MEMORY_BASE, MEMORY_PER_WEIGHT_BYTE, memory_estimate

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}))
    with open(tmp_path / "model-00001-of-00002.safetensors", "wb") as shard:
        shard.truncate(2**30)
    with open(tmp_path / "model-00002-of-00002.safetensors", "wb") as shard:
        shard.truncate(2**30)
    (tmp_path / "tokenizer.json").write_text("{}" * 1000)
    assert memory_estimate(tmp_path, "float32") == int(MEMORY_BASE + MEMORY_PER_WEIGHT_BYTE * 4 * 2**30)  # bf16 loaded as fp32
    assert memory_estimate(tmp_path, "float16") == int(MEMORY_BASE + MEMORY_PER_WEIGHT_BYTE * 2 * 2**30)
    assert memory_estimate(checkpoint("bert")) < MEMORY_BASE + 2**20  # a tiny checkpoint: the base


@pytest.mark.slow
def test_tasks_sign_what_they_upload_with_the_drivers_key(fresh, tmp_path):
    """With a signing key, nodes sign their uploads (the key file is read at the same path there),
    and the driver, trusting only that key, reads them back instead of exporting again."""
    from test_signing import keypair

    from hatch_onnx.signing import Signer

    cluster = fresh
    private, public = keypair(tmp_path, "ci")
    env = {**cluster["env"], "HATCH_ONNX_SIGNING_KEY": str(private), "HATCH_ONNX_TRUSTED_KEYS": str(public)}
    models = {name: MODELS[name] for name in ("bert", "roberta")}
    result = build(params(tmp_path, models, remote=f"s3://{BUCKET}/signed"), env, tmp_path / "cache", "--out", str(tmp_path / "out"),
                   "--ray-address", cluster["address"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert {row[0] for row in table(result.stdout).values()} == {"exported"} and "not used" not in result.stderr, result.stderr
    client = cluster["client"]
    markers = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix="signed/")["Contents"] if item["Key"].endswith("entry.json")]
    assert len(markers) == 4
    for marker in markers:
        assert json.loads(client.get_object(Bucket=BUCKET, Key=marker)["Body"].read())["signature"]["key"] == Signer(private).id
    assert (tmp_path / "out" / "manifest.json.sig").is_file()
