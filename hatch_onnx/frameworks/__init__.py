"""The two framework back-ends and the one place that chooses between them.

``backend("pt")`` / ``backend("tf")`` returns the module that implements :class:`Backend` for
that framework (:mod:`.pytorch`, :mod:`.tensorflow`); nothing else switches on a framework
name to pick code. This package is light at import: a back-end module (and its framework) is
imported only when :func:`backend` is called. The environment that makes transformers see one
framework only is in :mod:`.env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from hatch_onnx.config import OnnxConfig

FRAMEWORKS = ("pt", "tf")

class Backend(Protocol):
    """What :mod:`.pytorch` and :mod:`.tensorflow` each provide, as module-level functions.

    :mod:`.tensorflow` also traces encoder-decoder graph sets (``export_graph_set``,
    ``graph_set_reference``, given the interfaces by :mod:`hatch_onnx.graph_sets`, which traces
    PyTorch's sets itself).
    """

    FRAMEWORK: str
    EXPORTER_NAMES: tuple[str, ...]

    def is_model(self, model: Any) -> bool:
        """Whether ``model`` is one of this framework's models."""

    def export(self, preprocessor: Any, model: Any, config: "OnnxConfig", opset: int, output: Path,
               exporter: Optional[str] = None) -> tuple[list[str], list[str]]:
        """Write ``output`` (and ``output.data`` when :func:`hatch_onnx.config.needs_external_data`).

        Returns the graph's (inputs, outputs).
        """

    def to_model_precision(self, inputs: Mapping[str, Any], model: Any) -> dict[str, Any]:
        """``inputs`` with floating values in the model's precision."""

    def run_reference(self, model: Any, config: "OnnxConfig", inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The model's outputs on ``inputs`` (numpy arrays), named as the config's."""

    def sequence_reference(self, model: Any, config: "OnnxConfig", inputs: Mapping[str, Any], output: str) -> Any:
        """The model's ``output`` (``logits`` or ``last_hidden_state``) at every position of named ``inputs``,
        in one pass without a cache (numpy float32, batch x sequence x ...): a generation check's reference."""

    def weight_bytes(self, model: Any) -> int:
        """The bytes of the model's weights (what decides external data: :func:`hatch_onnx.config.needs_external_data`)."""

    def weights_reaching_outputs(self, model: Any, config: "OnnxConfig", inputs: Mapping[str, Any],
                                 names: Sequence[str]) -> list[str]:
        """Which of the weights ``names`` influence the graph's outputs."""


def backend(framework: str) -> Backend:
    """The back-end module of ``framework`` ("pt" or "tf"), imported on first use."""
    if framework == "pt":
        from hatch_onnx.frameworks import pytorch

        return pytorch  # type: ignore[return-value]
    if framework == "tf":
        from hatch_onnx.frameworks import tensorflow

        return tensorflow  # type: ignore[return-value]
    from hatch_onnx.errors import FrameworkError

    raise FrameworkError(f"framework must be 'pt' or 'tf', not {framework!r}")


def backend_of(model: Any) -> Backend:
    """The back-end of a loaded model, without importing a framework the process has not imported."""
    import sys

    torch = sys.modules.get("torch")
    return backend("pt" if torch is not None and isinstance(model, torch.nn.Module) else "tf")
