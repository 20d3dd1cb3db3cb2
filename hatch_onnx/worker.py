"""The export worker: ``python -m hatch_onnx.worker`` runs job after job in one process.

Protocol: JSON lines. Each request on stdin is one object, a job's :meth:`~hatch_onnx.plan.Job.request`
plus ``"output"`` (a staging folder to write into); the worker answers each with one line on
stdout, ``PROTOCOL_MARK`` then ``{"ok": true, "report": {...}}`` or ``{"ok": false, "error":
"...", "type": "...", "exit_code": N}`` (the CLI's exit code for that error). Anything a
library prints goes to stderr: the worker keeps stdout for its answers.

Torch or TensorFlow and transformers are imported once, by the first job, and the last model
loaded is kept: the jobs of one checkpoint that share a head class (``default`` and
``default-with-past``) share one load. The pool (:mod:`hatch_onnx.pool`) starts, feeds and
restarts workers.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

PROTOCOL_MARK = "hatch-onnx-worker:"


class _LastModel:
    """A model loader that keeps the last model it loaded, with the config values it came with."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._loaded: Any = None
        self._config: dict = {}

    def __call__(self, feature: str, model: str, framework: str, cache_dir: Optional[str]) -> tuple[Any, list[str]]:
        from hatch_onnx.onnx.features import FeaturesManager

        model_class = FeaturesManager.get_model_class_for_feature(feature, framework)
        key = (model, framework, model_class.__name__, cache_dir)
        if key != self._key:
            self.forget()
            self._loaded = FeaturesManager.load_model(feature, model, framework, cache_dir)
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


def serve(requests: TextIO, replies: TextIO) -> None:
    from hatch_onnx.errors import HatchOnnxError
    from hatch_onnx.exporting import ExportRequest, export_checkpoint

    load = _LastModel()
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        output = Path(request.pop("output"))
        try:
            report = export_checkpoint(
                ExportRequest(**{**request, "model": Path(request["model"])}), output, output / "report.json",
                log=lambda text: print(text, file=sys.stderr), load=load,
            )
            reply = {"ok": True, "report": report}
        except HatchOnnxError as exc:
            reply = {"ok": False, "error": str(exc), "type": type(exc).__name__, "exit_code": exc.exit_code}
        except Exception as exc:  # reported to the parent, which names the job
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0], "type": type(exc).__name__, "exit_code": 1}
        replies.write(PROTOCOL_MARK + json.dumps(reply) + "\n")
        replies.flush()


def main() -> int:
    # Answers go to the original stdout; file descriptor 1 (C libraries and print alike) to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
