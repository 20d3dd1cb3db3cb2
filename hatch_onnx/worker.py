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
from pathlib import Path

PROTOCOL_MARK = "hatch-onnx-worker:"


def worker_command(python: str) -> list[str]:
    return [python, "-m", "hatch_onnx.worker"]


def worker_env(framework: str) -> dict[str, str]:
    """The worker's environment: our package importable, only the job's framework visible to transformers."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
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
