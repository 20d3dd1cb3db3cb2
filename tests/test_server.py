"""The warm export server (opt-in): the first `hatch-onnx export` leaves one behind, the next are served by it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import checkpoint

pytestmark = pytest.mark.slow

# Run the CLI in a fresh process and report which heavy modules that process imported.
CLI = ("import json, sys; from hatch_onnx.cli import main; code = main(sys.argv[1:]); "
       "print(json.dumps({'code': code, 'heavy': sorted(m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules)}))")


@pytest.fixture
def server_env():
    """Servers on, with a private socket folder (short: a socket path has ~107 bytes) that is cleaned up."""
    folder = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    env = {**os.environ, "HATCH_ONNX_SERVER": "1", "HATCH_ONNX_SERVER_IDLE": "120", "TMPDIR": str(folder)}
    yield env, folder / f"hatch-onnx-{os.getuid()}"
    for lock in folder.glob("*/*.lock"):
        pid = lock.read_text().strip()
        if pid:
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def export(env: dict, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    result = subprocess.run([sys.executable, "-c", CLI, "export", *args], capture_output=True, text=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def wait_for_socket(sockets: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(sockets.glob("*.sock")) if sockets.is_dir() else []
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("no server socket appeared")


def test_first_export_starts_a_server_and_the_next_are_served(server_env, tmp_path):
    env, sockets = server_env
    first, result = export(env, "--model", str(checkpoint("bert")), str(tmp_path / "a"))
    assert first["code"] == 0 and "torch" in first["heavy"], result.stderr  # exported in its own process
    wait_for_socket(sockets)
    time.sleep(1)  # the server binds before it warms up; either way the next call is answered

    served, result = export(env, "--model", str(checkpoint("bert")), str(tmp_path / "b"))
    assert served == {"code": 0, "heavy": []}, result.stderr  # nothing heavy imported by the client
    assert "Validated" in result.stdout and "max abs diff" in result.stdout
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()

    # Bad input answered by the server: the CLI's one line and exit code, nothing written.
    bad, result = export(env, "--model", str(checkpoint("vit")), "--feature", "causal-lm", str(tmp_path / "c"))
    assert bad == {"code": 2, "heavy": []}
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hatch-onnx: error:") and "causal-lm" in lines[0]
    assert not (tmp_path / "c" / "model.onnx").exists()


def test_a_server_is_only_used_by_clients_that_would_run_the_same(server_env, tmp_path):
    env, sockets = server_env
    export(env, "--model", str(checkpoint("bert")), str(tmp_path / "a"))
    wait_for_socket(sockets)
    other, _ = export({**env, "HF_HOME": str(tmp_path / "hf")}, "--model", str(checkpoint("bert")), str(tmp_path / "b"))
    assert "torch" in other["heavy"]  # another environment: not served, exported in its own process


def test_idle_server_exits_and_removes_its_socket(server_env, tmp_path):
    env, sockets = server_env
    env = {**env, "HATCH_ONNX_SERVER_IDLE": "3"}
    export(env, "--model", str(checkpoint("bert")), str(tmp_path / "a"))
    # The server may have warmed up, idled and gone while the client exported in its own process
    # (a loaded machine): follow it by the pid its lock file names rather than by its socket.
    deadline = time.monotonic() + 120
    while not list(sockets.glob("*.lock")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (lock,) = sockets.glob("*.lock")
    while not lock.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = int(lock.read_text().split()[0])
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:  # warm-up first (imports), then 3 s idle
        time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not list(sockets.glob("*.sock"))  # and it took its socket with it


def test_off_by_default(tmp_path, server_env):
    env, sockets = server_env
    export({k: v for k, v in env.items() if k != "HATCH_ONNX_SERVER"}, "--model", str(checkpoint("bert")), str(tmp_path / "a"))
    time.sleep(1)
    assert not sockets.exists() or not list(sockets.glob("*.sock"))


def test_a_served_export_writes_what_the_clients_own_process_would(server_env, tmp_path):
    """The client's umask (077 here) travels with the request: files 0600, folders 0700, as in-process."""
    env, sockets = server_env
    export(env, "--model", str(checkpoint("bert")), str(tmp_path / "warm"))
    wait_for_socket(sockets)
    time.sleep(1)
    out = tmp_path / "private"
    result = subprocess.run([sys.executable, "-c", CLI, "export", "--model", str(checkpoint("bert")), str(out)], capture_output=True,
                            text=True, env=env, preexec_fn=lambda: os.umask(0o077))
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"code": 0, "heavy": []}, result.stderr  # served
    assert {oct(path.stat().st_mode & 0o777) for path in out.iterdir()} == {"0o600"}
    assert oct(out.stat().st_mode & 0o777) == "0o700"
