"""A warm export server for ``hatch-onnx export``: torch and transformers imported once, not per call.

Importing torch and transformers is most of a small export's time (about 3 of 4.5 s for a
22M-parameter BERT on this class of machine), and it is the same every call. As Gradle's daemon
and Bazel's server do, with ``$HATCH_ONNX_SERVER=1`` the first ``hatch-onnx export`` runs in its
own process as always and leaves a server behind; the next calls send it their request and
print its answer (1.3-1.5 s instead of 4.5 s for that BERT). The server runs the same code as a
build's worker (:func:`hatch_onnx.worker.handle`), one request at a time, keeps no model between
requests, and exits after ``$HATCH_ONNX_SERVER_IDLE`` seconds (default 300) without one.

Off by default: a process that outlives the command holds ~600 MB while idle, and it moves an
export's time and memory out of the process a user (or a CI step, or a benchmark) measures.
Many exports in a row are what ``hatch-onnx build`` is for: its workers import once and run
every job.

A server answers only clients that would have run exactly what it runs: its socket is named
by a hash of the interpreter, this package (its version and its files' mtimes), the framework
and the environment variables that steer transformers and torch. Sockets live in a folder only
the user can enter::

    <tmp>/hatch-onnx-<uid>/
    ├── 3fa9…e1.sock        the server's Unix socket
    └── 3fa9…e1.lock        held by the live server: a second one exits at once

Anything that goes wrong on the way (no server, a server that dies, a refused socket) makes the
client export in its own process: the server only ever saves time.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from hatch_onnx.worker import handle

ENABLE_ENV = "HATCH_ONNX_SERVER"
IDLE_ENV = "HATCH_ONNX_SERVER_IDLE"
DEFAULT_IDLE_SECONDS = 300.0
# What changes what an export does, besides its request: a server started under other values
# of these is another server.
_STEERING_PREFIXES = ("HF_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "USE_", "OMP_", "MKL_", "TF_", "PYTHON", "TOKENIZERS_")
_CONNECT_TIMEOUT = 2.0


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ENABLE_ENV, "0") in {"1", "true", "yes", "on"} and hasattr(socket, "AF_UNIX")


def _folder() -> Path:
    folder = Path(tempfile.gettempdir()) / f"hatch-onnx-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    st = folder.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{folder}: not a private folder of this user")
    return folder


def _key(framework: str) -> str:
    import xxhash

    from hatch_onnx.__about__ import __version__

    package = Path(__file__).resolve().parent
    newest = max(path.stat().st_mtime_ns for path in package.rglob("*.py"))
    steering = sorted((k, v) for k, v in os.environ.items() if k.startswith(_STEERING_PREFIXES) and k not in {ENABLE_ENV, IDLE_ENV})
    identity = [sys.executable, str(package), __version__, newest, framework, steering]
    return xxhash.xxh3_128_hexdigest(json.dumps(identity).encode())


def _address(framework: str) -> Path:
    return _folder() / f"{_key(framework)}.sock"


# --- the client ----------------------------------------------------------------------------------


UMASK_FIELD = "umask"


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: put it straight back
    os.umask(mask)
    return mask


def _serve_one(payload: dict) -> dict:
    """One request, under the client's umask (one request at a time: the process-wide mask is ours to set)."""
    mask = payload.pop(UMASK_FIELD, None)
    saved = os.umask(mask) if isinstance(mask, int) and 0 <= mask <= 0o777 else None
    try:
        return handle(payload)
    finally:
        if saved is not None:
            os.umask(saved)


def request(payload: Mapping[str, Any], framework: str) -> Optional[dict]:
    """The server's answer to ``payload`` (see :func:`hatch_onnx.worker.handle`), ``None`` if none answered."""
    try:
        address = _address(framework)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(_CONNECT_TIMEOUT)
            connection.connect(str(address))
            connection.settimeout(None)  # an export takes as long as it takes
            # The client's umask travels with the request: the files are written as its own process would.
            connection.sendall(json.dumps({**payload, UMASK_FIELD: _current_umask()}).encode() + b"\n")
            connection.shutdown(socket.SHUT_WR)
            with connection.makefile("rb") as answers:
                answer = answers.readline()
        return json.loads(answer) if answer else None
    except Exception:  # noqa: BLE001 - whatever failed, exporting in this process still works
        return None


def start(framework: str) -> None:
    """Start a server in the background (detached: it outlives this process); errors are ignored.

    The address is computed here, from this client's environment, and handed to the server,
    whose own environment is the worker's (our package on its path, one framework visible).
    """
    from hatch_onnx.pool import worker_env

    try:
        subprocess.Popen(
            [sys.executable, "-m", __name__, framework, str(_address(framework))], env=worker_env(framework), start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
        )
    except Exception:  # noqa: BLE001 - no server: the next call exports in its own process
        pass


# --- the server ----------------------------------------------------------------------------------


def serve(framework: str, address: Path, idle_seconds: float) -> int:
    import fcntl

    lock = open(address.with_suffix(".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another server for the same key is alive
        return 0
    lock.write(f"{os.getpid()}\n")  # who holds it, for people and tests
    lock.flush()
    address.unlink(missing_ok=True)  # a dead server's socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(address))
        listener.listen(8)
        listener.settimeout(idle_seconds)
        _warm_up(framework)
        try:
            while True:
                try:
                    connection, _ = listener.accept()
                except socket.timeout:
                    return 0
                with connection, connection.makefile("rwb") as stream:
                    line = stream.readline()
                    if line.strip():
                        stream.write(json.dumps(_serve_one(json.loads(line))).encode() + b"\n")
                        stream.flush()
                gc.collect()  # the model is gone with the request: an idle server holds only its imports
        finally:
            address.unlink(missing_ok=True)


def _warm_up(framework: str) -> None:
    """Import what every export imports, before the first request arrives."""
    from hatch_onnx.loading import model_class_for_feature

    model_class_for_feature("default", framework)
    if framework == "pt":
        import hatch_onnx.frameworks.pytorch  # noqa: F401 - torch.onnx
    import onnxruntime  # noqa: F401


def main() -> int:
    framework, address = sys.argv[1], Path(sys.argv[2])
    return serve(framework, address, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_SECONDS)))


if __name__ == "__main__":
    sys.exit(main())
