"""The export worker: ``python -m hatch_onnx.worker`` runs one job in its own process.

Protocol (JSON, one object each way): the request on stdin
``{"model", "feature", "framework", "opset", "atol", "exporter", "allow_new_head", "output"}``;
on stdout, the last line is ``{"ok": true, "report": {...}}`` or
``{"ok": false, "error": "...", "type": "...", "exit_code": N}``. The exit code matches the CLI's.
A separate process lets the build survive a crash or an out-of-memory kill, time a job out, run
several at once, and use an interpreter that has the frameworks when the build's own has not.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

PROTOCOL_MARK = "hatch-onnx-worker:"


def worker_command(python: str) -> list[str]:
    return [python, "-m", "hatch_onnx.worker"]


def _package_path() -> str:
    """A folder holding only this ``hatch_onnx`` (a symlink), for the worker's ``PYTHONPATH``.

    The worker may be another interpreter (the user's environment, with the frameworks) than the
    build's (an isolated build environment). Putting our parent folder on its path would also
    put every package beside ours first, compiled ones included, possibly for another Python.
    """
    package = Path(__file__).resolve().parent
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    folder = Path(tempfile.gettempdir()) / f"hatch-onnx-path-{user}-{_folder_name(str(package))}"
    link = folder / "hatch_onnx"
    if link.exists() and link.resolve() != package:  # not ours: never trust it
        return str(package.parent)
    if not link.exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(package, target_is_directory=True)
        except FileExistsError:  # another build made it first
            pass
        except OSError:  # no symlinks here: fall back to the parent folder
            return str(package.parent)
    return str(folder)


def _folder_name(text: str) -> str:
    import hashlib  # a name for a folder, not a content address: any stable hash does

    return hashlib.sha1(text.encode()).hexdigest()[:16]


def worker_env(framework: str) -> dict[str, str]:
    """The worker's environment: our package importable, only the job's framework visible to transformers."""
    env = dict(os.environ)
    package_path = _package_path()
    env["PYTHONPATH"] = package_path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if framework == "pt":
        env.update({"USE_TF": "0", "USE_TORCH": "1"})
    else:
        env.update({"USE_TORCH": "0", "USE_TF": "1", "TF_USE_LEGACY_KERAS": "1"})
    return env


def _reply(payload: dict) -> None:
    sys.stdout.write(PROTOCOL_MARK + json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> int:
    if sys.argv[1:] == ["--versions"]:
        from hatch_onnx.plan import installed_versions

        print(json.dumps(installed_versions()))
        return 0
    from hatch_onnx.errors import HatchOnnxError
    from hatch_onnx.exporting import ExportRequest, export_checkpoint

    request = json.loads(sys.stdin.read())
    output = Path(request.pop("output"))
    try:
        report = export_checkpoint(
            ExportRequest(**{**request, "model": Path(request["model"])}),
            output,
            output / "report.json",
            log=lambda line: print(line, file=sys.stderr),
        )
    except HatchOnnxError as exc:
        _reply({"ok": False, "error": str(exc), "type": type(exc).__name__, "exit_code": exc.exit_code})
        return exc.exit_code
    except Exception as exc:  # reported to the parent, which names the job
        _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0], "type": type(exc).__name__, "exit_code": 1})
        return 1
    _reply({"ok": True, "report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
