"""The export worker: ``python -m hatch_onnx.worker`` runs job after job in one process.

Protocol: JSON lines. Each request on stdin is one object, a job's :meth:`~hatch_onnx.plan.Job.request`
plus ``"output"`` (a staging folder to write into) and ``"report"`` (where the validation report
goes); the worker answers each with one line on stdout, ``PROTOCOL_MARK`` then ``{"ok": true,
"report": {...}, "log": [...]}`` or ``{"ok": false, "error": "...", "type": "...", "exit_code":
N, "log": [...]}`` (the CLI's exit code for that error). Anything a library prints goes to
stderr: the worker keeps stdout for its answers.

Torch or TensorFlow and transformers are imported once, by the first job, and the last model
loaded is kept: the jobs of one checkpoint that share a head class (``default`` and
``default-with-past``) share one load. A model large enough for external data is freed while
onnxruntime holds its graph (:class:`hatch_onnx.exporting.Loaded`), and loaded again by the
generation check that follows, or by the next job. The pool (:mod:`hatch_onnx.pool`) starts, feeds and
restarts workers.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any, Optional, TextIO

PROTOCOL_MARK = "hatch-onnx-worker:"


class _LastModel:
    """A model loader that keeps the last model it loaded, with the config values it came with."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._loaded: Any = None
        self._config: dict = {}

    def __call__(self, feature: str, model: str, framework: str, cache_dir: Optional[str], dtype: str = "float32") -> tuple[Any, list[str]]:
        from hatch_onnx.loading import load_model, model_class_for_feature

        model_class = model_class_for_feature(feature, framework)
        key = (model, framework, model_class.__name__, cache_dir, dtype)
        if key != self._key:
            self.forget()
            self._loaded = load_model(feature, model, framework, cache_dir, dtype)
            self._key = key
            self._config = dict(self._loaded[0].config.__dict__)
        else:  # exports override config values (use_cache...): give the next job the model as loaded
            self._loaded[0].config.__dict__.update(self._config)
        return self._loaded

    def forget(self) -> None:
        if self._key is not None:
            import gc

            self._key = self._loaded = None
            self._config = {}
            gc.collect()


def handle(request: Mapping[str, Any], load: Optional[Callable] = None) -> dict:
    """Run one request (a job's fields, ``output``, optionally ``report``); the answer, as JSON data.

    Never raises for a failed export: the error's message, type and exit code travel back, with
    the lines the export logged.
    """
    from hatch_onnx.errors import HatchOnnxError
    from hatch_onnx.exporting import ExportRequest, export_checkpoint

    fields = dict(request)
    output = Path(fields.pop("output"))
    report = fields.pop("report", None)
    log: list[str] = []
    try:
        if "variant" in fields:  # an optimised or quantised graph of an export (hatch_onnx.variants)
            from hatch_onnx.atomic import write_json
            from hatch_onnx.loading import load_model
            from hatch_onnx.variants import make_and_validate

            result = make_and_validate({**fields, "output": str(output)}, load or load_model,
                                       **({"release": load.forget} if isinstance(load, _LastModel) else {}))
            if report:
                write_json(report, result)
        else:
            result = export_checkpoint(
                ExportRequest(**{**fields, "model": Path(fields["model"])}), output, Path(report) if report else None,
                log=log.append, **({"load": load} if load is not None else {}),
                # a large model is let go of while onnxruntime holds its graph (loading.Held)
                **({"release": load.forget} if isinstance(load, _LastModel) else {}),
            )
        return {"ok": True, "report": result, "log": log}
    except HatchOnnxError as exc:
        return {"ok": False, "error": str(exc), "type": type(exc).__name__, "exit_code": exc.exit_code, "log": log}
    except Exception as exc:  # reported to the parent, which names the job
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0], "type": type(exc).__name__,
                "exit_code": 1, "log": log, "unexpected": True}


def serve(requests: TextIO, replies: TextIO) -> None:
    load = _LastModel()
    for line in requests:
        if line.strip():
            reply = handle(json.loads(line), load)
            replies.write(PROTOCOL_MARK + json.dumps(reply) + "\n")
            replies.flush()


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the build that started it dies, ``kill -9`` included.

    Otherwise an orphan would export on for up to the job timeout. The build's pool sets
    ``HATCH_ONNX_PARENT_PID``; a parent already gone by now is caught by comparing it.
    """
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pipe closing ends the worker after its job
        return
    parent = os.environ.get("HATCH_ONNX_PARENT_PID")
    if parent and os.getppid() != int(parent):
        os._exit(1)


def main() -> int:
    _die_with_parent()
    # Answers go to the original stdout; file descriptor 1 (C libraries and print alike) to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
