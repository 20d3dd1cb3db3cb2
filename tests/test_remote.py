"""The remote cache tier against a real S3 API server (moto's) on 127.0.0.1: two machines, one bucket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import checkpoint

pytestmark = pytest.mark.slow
BUCKET = "models"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server, in this process, on a free port of 127.0.0.1; stopped after the module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    yield env, client
    server.stop()


@pytest.fixture
def bucket(s3):
    env, client = s3
    client.create_bucket(Bucket=BUCKET)
    yield env, client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def project(tmp_path: Path, models: dict, remote: str = f"s3://{BUCKET}/team") -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"onnx": {"remote": remote, "models": models}}))
    return path


MODELS = {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default", "masked-lm"]},
          "vit": {"checkpoint": str(checkpoint("vit")), "features": ["default"]}}


def build(params: Path, env: dict, cache: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hatch_onnx", "build", "--params", str(params), *args],
                            capture_output=True, text=True, env={**os.environ, **env, "HATCH_ONNX_CACHE": str(cache)})
    return result, time.perf_counter() - started


def statuses(result: subprocess.CompletedProcess) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:] if line.split() and ":" in line.split()[0]}


def test_machine_b_gets_machine_as_exports_without_exporting(bucket, tmp_path):
    env, client = bucket
    params = project(tmp_path, MODELS)
    a, a_seconds = build(params, env, tmp_path / "cache-a", "--out", str(tmp_path / "out-a"))
    assert a.returncode == 0, a.stderr
    assert set(statuses(a).values()) == {"exported"}
    keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert sum(key.endswith("/entry.json") for key in keys) == 3 and all(key.startswith("team/v1/") for key in keys)

    b, b_seconds = build(params, env, tmp_path / "cache-b", "--out", str(tmp_path / "out-b"))
    assert b.returncode == 0, b.stderr
    assert set(statuses(b).values()) == {"fetched"} and "Nothing exported" in b.stdout
    for name in ("bert/default/model.onnx", "bert/masked-lm/model.onnx", "vit/default/model.onnx"):
        assert (tmp_path / "out-a" / name).read_bytes() == (tmp_path / "out-b" / name).read_bytes()
    assert b_seconds < 0.5 * a_seconds, (a_seconds, b_seconds)
    print(f"machine A (cold, exports): {a_seconds:.1f} s; machine B (remote hits): {b_seconds:.1f} s")


def test_a_tampered_remote_object_is_never_served(bucket, tmp_path):
    env, client = bucket
    params = project(tmp_path, {"bert": MODELS["bert"]})
    assert build(params, env, tmp_path / "cache-a")[0].returncode == 0
    graphs = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"] if item["Key"].endswith("model.onnx")]
    body = bytearray(client.get_object(Bucket=BUCKET, Key=graphs[0])["Body"].read())
    body[-1] ^= 0xFF  # same size, other content
    client.put_object(Bucket=BUCKET, Key=graphs[0], Body=bytes(body))

    b, _ = build(params, env, tmp_path / "cache-b", "--out", str(tmp_path / "out-b"))
    assert b.returncode == 0, b.stderr
    assert sorted(statuses(b).values()) == ["exported", "fetched"]  # the tampered one was exported again
    tampered_key = graphs[0].split("/")[-2]
    assert tampered_key in b.stderr and "does not match its entry.json" in b.stderr
    local = list((tmp_path / "cache-b" / "v1").glob(f"*/{tampered_key}/model.onnx"))
    assert local and local[0].read_bytes() != bytes(body)


def test_unreachable_remote_warns_once_and_builds_locally(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    params = project(tmp_path, {"bert": MODELS["bert"]})
    result, _ = build(params, env, tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning: remote cache" in line]
    assert len(warnings) == 1 and "unavailable" in warnings[0], result.stderr
    again, _ = build(params, env, tmp_path / "cache")
    assert again.returncode == 0 and "Nothing exported" in again.stdout  # local hits need no remote


def test_an_upload_cut_short_is_not_an_entry(bucket, tmp_path):
    """A crash mid-upload leaves files without entry.json: other machines do not see an entry."""
    env, client = bucket
    params = project(tmp_path, {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}})
    assert build(params, env, tmp_path / "cache-a")[0].returncode == 0
    (marker,) = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"] if item["Key"].endswith("entry.json")]
    client.delete_object(Bucket=BUCKET, Key=marker)  # as if A died before its last upload
    b, _ = build(params, env, tmp_path / "cache-b")
    assert b.returncode == 0 and statuses(b) == {"bert:default": "exported"}
    assert client.head_object(Bucket=BUCKET, Key=marker)  # B's write-through completed the entry


def test_push_pull_and_ls(bucket, tmp_path):
    env, client = bucket
    full_env = {**os.environ, **env}
    # Build without the remote (a laptop), then push, then pull on a fresh machine.
    no_remote = tmp_path / "local.yaml"
    no_remote.write_text(yaml.safe_dump({"onnx": {"models": MODELS}}))
    assert build(no_remote, env, tmp_path / "cache-a")[0].returncode == 0
    params = project(tmp_path, MODELS)

    def cli(*args: str, cache: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hatch_onnx", "cache", *args, "--params", str(params)],
                              capture_output=True, text=True, env={**full_env, "HATCH_ONNX_CACHE": str(tmp_path / cache)})

    pushed = cli("push", "--only", "bert", cache="cache-a")
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed bert:default" in pushed.stdout and "pushed bert:masked-lm" in pushed.stdout and "vit" not in pushed.stdout
    listed = cli("ls", "--remote", cache="cache-a")
    assert listed.returncode == 0 and "2 entr(ies)" in listed.stdout
    again = cli("push", cache="cache-a").stdout.splitlines()
    assert [line for line in again if line.startswith("pushed ")] == ["pushed vit:default"]  # bert is there already
    pulled = cli("pull", cache="cache-b")
    assert pulled.returncode == 0, pulled.stderr
    assert sum(line.startswith("pulled ") for line in pulled.stdout.splitlines()) == 3, pulled.stdout
    b, _ = build(params, env, tmp_path / "cache-b")
    assert "Nothing exported" in b.stdout and set(statuses(b).values()) == {"hit"}  # pulled: local hits


def test_no_remote_configured_is_bad_input(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"onnx": {"models": {"bert": MODELS["bert"]}}}))
    env = {k: v for k, v in os.environ.items() if k != "HATCH_ONNX_REMOTE"}
    result = subprocess.run([sys.executable, "-m", "hatch_onnx", "cache", "push", "--params", str(params)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "no remote cache" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- a file:// remote: entries that are malformed, damaged or pointed elsewhere ------------------

BERT = {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default", "masked-lm"]}}


def _entries(remote: Path) -> dict[str, Path]:
    """The remote's entries by feature (read from their report.json)."""
    import json

    return {json.loads((folder / "report.json").read_text())["feature"]: folder for folder in remote.glob("v1/*/*")}


def test_a_file_remote_receives_entries_and_serves_them(tmp_path):
    remote = tmp_path / "remote"  # does not exist yet: its folders are made
    params = project(tmp_path, BERT, remote=f"file://{remote}")
    first, _ = build(params, {}, tmp_path / "cache-a")
    assert first.returncode == 0, first.stderr
    assert sorted(_entries(remote)) == ["default", "masked-lm"]
    second, _ = build(params, {}, tmp_path / "cache-b")
    assert statuses(second) == {"bert:default": "fetched", "bert:masked-lm": "fetched"}, second.stdout


def test_a_malformed_remote_entry_is_skipped_alone(tmp_path):
    import json

    remote = tmp_path / "remote"
    params = project(tmp_path, BERT, remote=f"file://{remote}")
    assert build(params, {}, tmp_path / "cache-a")[0].returncode == 0
    entry = _entries(remote)["default"] / "entry.json"
    record = json.loads(entry.read_text())
    for damage in ({**record, "files": list(record["files"])}, {**record, "files": {**record["files"], "model.onnx": {"size": "big"}}},
                   "[" * 100_000, {**record, "files": {k: v for k, v in record["files"].items() if k != "report.json"}}):
        entry.write_text(damage if isinstance(damage, str) else json.dumps(damage))
        result, _ = build(params, {}, tmp_path / f"cache-{len(str(damage))}")
        assert result.returncode == 0, result.stderr
        # the bad entry is named and exported again; the rest of the remote keeps working
        assert statuses(result) == {"bert:default": "exported", "bert:masked-lm": "fetched"}, result.stdout + result.stderr
        assert f"{entry.parent}" in result.stderr and "malformed" in result.stderr and "unavailable" not in result.stderr


def test_a_damaged_remote_entry_is_replaced_by_the_next_upload(tmp_path):
    remote = tmp_path / "remote"
    params = project(tmp_path, BERT, remote=f"file://{remote}")
    assert build(params, {}, tmp_path / "cache-a")[0].returncode == 0
    graph = _entries(remote)["masked-lm"] / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:100])  # cut short
    push = subprocess.run([sys.executable, "-m", "hatch_onnx", "cache", "push", "--params", str(params)], capture_output=True, text=True,
                          env={**os.environ, "HATCH_ONNX_CACHE": str(tmp_path / "cache-a")})
    assert push.returncode == 0 and "pushed bert:masked-lm\n1 job(s) pushed" in push.stdout, push.stdout + push.stderr
    result, _ = build(params, {}, tmp_path / "cache-b")
    assert statuses(result) == {"bert:default": "fetched", "bert:masked-lm": "fetched"}, result.stdout + result.stderr


def test_no_upload_follows_a_symlink_out_of_a_file_remote(tmp_path):
    import shutil

    remote, elsewhere = tmp_path / "remote", tmp_path / "elsewhere"
    params = project(tmp_path, {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}}, remote=f"file://{remote}")
    first, _ = build(params, {}, tmp_path / "cache-a")  # learn the key, then point its folder elsewhere
    (key_folder,) = remote.glob("v1/*/*")
    shutil.rmtree(remote)
    (remote / "v1").mkdir(parents=True)
    elsewhere.mkdir()
    (remote / "v1" / key_folder.parent.name).symlink_to(elsewhere, target_is_directory=True)
    again, _ = build(params, {}, tmp_path / "cache-c")
    assert again.returncode == 0, again.stderr
    assert not any(elsewhere.iterdir()) and "outside the remote" in again.stderr


def test_a_stalled_remote_is_a_warning_not_a_hang(tmp_path):
    """An endpoint that accepts connections and never answers: `cache pull` and a build end, and say why."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in iter(int, 1)], daemon=True).start()
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.getsockname()[1]}", "HATCH_ONNX_REMOTE_TIMEOUT": "2"}
    params = project(tmp_path, {"bert": {"checkpoint": str(checkpoint("bert")), "features": ["default"]}})
    started = time.perf_counter()
    pull = subprocess.run([sys.executable, "-m", "hatch_onnx", "cache", "pull", "--params", str(params)], capture_output=True, text=True,
                          env={**os.environ, **env, "HATCH_ONNX_CACHE": str(tmp_path / "cache")}, timeout=120)
    assert time.perf_counter() - started < 60, "the pull waited on the stalled remote"
    assert pull.returncode == 0 and pull.stderr.count("unavailable") == 1 and "timeout" in pull.stderr.lower(), pull.stderr
    result, seconds = build(params, env, tmp_path / "cache")
    assert result.returncode == 0 and statuses(result) == {"bert:default": "exported"} and seconds < 90, result.stderr
