"""One exception hierarchy for the whole package.

Every error is a :class:`HatchOnnxError` and also the closest built-in, so callers that
already catch ``KeyError`` or ``ValueError`` keep working. ``exit_code`` is what the CLI
returns for it: 2 for bad input (nothing was attempted), 1 for work that failed.
"""

from __future__ import annotations

from typing import Any


class HatchOnnxError(Exception):
    """Root of every error hatch-onnx raises on purpose."""

    exit_code = 1

    def __str__(self) -> str:  # KeyError quotes its message; we want one clean line
        return str(self.args[0]) if self.args else self.__class__.__name__


# --- bad input (exit 2) ---------------------------------------------------------------


class BadInputError(HatchOnnxError):
    exit_code = 2


class CheckpointError(BadInputError, FileNotFoundError):
    """A checkpoint folder, or a file it needs, is missing or unreadable."""

    def __init__(self, message: str, path: Any = None) -> None:
        super().__init__(message)
        self.path = path


class UnsupportedModelTypeError(BadInputError, KeyError):
    def __init__(self, message: str, model_type: str | None = None) -> None:
        super().__init__(message)
        self.model_type = model_type


class UnsupportedFeatureError(BadInputError, KeyError):
    def __init__(self, message: str, model_type: str | None = None, feature: str | None = None) -> None:
        super().__init__(message)
        self.model_type = model_type
        self.feature = feature


class OpsetError(BadInputError, ValueError):
    def __init__(self, message: str, opset: int | None = None, minimum: int | None = None) -> None:
        super().__init__(message)
        self.opset = opset
        self.minimum = minimum


class FrameworkError(BadInputError, ValueError):
    """The framework asked for is unknown, absent from the checkpoint, or not installed."""


class ParamsError(BadInputError, ValueError):
    """params.yaml is malformed; ``key`` is the dotted path of the culprit."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class MissingHeadWeightsError(BadInputError, ValueError):
    """The checkpoint has no weights for the head the feature needs."""

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])


# --- failed work (exit 1) ---------------------------------------------------------------


class ExportError(HatchOnnxError, RuntimeError):
    """The exporter failed or produced a graph that cannot be loaded."""


class ValidationError(HatchOnnxError, ValueError):
    """The ONNX graph does not reproduce the reference model."""

    def __init__(self, message: str, output: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.output = output
        self.value = value


class InputMismatchError(ValidationError):
    """The graph's input names differ from the config's."""


class OutputMismatchError(ValidationError):
    """The graph's output names differ from the config's."""


class ShapeError(ValidationError):
    """An output's shape differs from the reference."""


class AtolError(ValidationError):
    """An output's values differ from the reference by more than atol."""


class GenerationError(ValidationError):
    """Greedy generation through the graph parts from the model's (a token or a step's logits); ``value``: the figures."""


class CorruptCacheEntryError(HatchOnnxError, ValueError):
    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class BuildError(HatchOnnxError, RuntimeError):
    """One or more jobs of a build failed; ``result`` is the build, every job's outcome (for the CLI's table).

    ``exit_code`` is set by whoever knows it: a build whose failures are all bad input (checkpoints
    the workers refused) is bad input too.
    """

    def __init__(self, message: str, exit_code: int | None = None, result: Any = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.result = result


class NotCachedError(BuildError):
    """A lookup-only build found jobs that must be exported."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"{len(missing)} job(s) not in the cache: {', '.join(missing)}")
        self.missing = missing


class WorkerDied(HatchOnnxError, RuntimeError):
    """The worker process ended (or was killed) before answering."""


class RemoteError(HatchOnnxError):
    """A remote operation failed (the reason is the message); callers warn and go on locally."""
